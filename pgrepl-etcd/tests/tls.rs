//! EtcdStore over https with a client certificate, against a single etcd member the test
//! starts (ports 23970/23980) with certificates made by `openssl` for the test.
//! `cargo test -p pgrepl-etcd --test tls`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Member;
use pgrepl_core::store::ConsensusStore;
use pgrepl_etcd::{EtcdOptions, EtcdStore};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`<name>-ca.pem`) and, signed by it, a certificate and key for 127.0.0.1 and
/// one for a client.
fn make_pki(dir: &Path, name: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.pem"), "-days", "2", "-subj", &format!("/CN={ca}")],
        ]
        .concat(),
    );
    // etcd's JSON gateway dials etcd's own gRPC server with the server certificate as its
    // client certificate: under --client-cert-auth it needs clientAuth too.
    for (who, ext) in
        [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"), ("client", "extendedKeyUsage=clientAuth\n")]
    {
        let base = format!("{name}-{who}");
        std::fs::write(dir.join(format!("{base}.ext")), ext).expect("ext file");
        openssl(
            dir,
            &[&["req"][..], &ec, &["-keyout", &format!("{base}.key"), "-out", &format!("{base}.csr"), "-subj", &format!("/CN={base}")]]
                .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{base}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
            ]
            .iter()
            .copied()
            .chain(["-out", &format!("{base}.pem"), "-days", "2", "-extfile", &format!("{base}.ext")])
            .collect::<Vec<&str>>(),
        );
    }
}

fn options(url: &str, ca: Option<PathBuf>, client: Option<(PathBuf, PathBuf)>) -> EtcdOptions {
    let mut o = EtcdOptions::new([url]);
    o.request_timeout = Duration::from_secs(3);
    o.ca_file = ca;
    if let Some((c, k)) = client {
        o.cert_file = Some(c);
        o.key_file = Some(k);
    }
    o
}

#[tokio::test]
async fn https_with_a_ca_and_a_client_certificate() {
    let pki = tempfile::tempdir().expect("tempdir");
    let d = pki.path();
    make_pki(d, "good");
    make_pki(d, "other");
    let p = |f: &str| d.join(f);
    let s = |f: &str| p(f).display().to_string();
    let m = Member::start(
        23970,
        23980,
        "https",
        &[
            "--cert-file".into(),
            s("good-server.pem"),
            "--key-file".into(),
            s("good-server.key"),
            "--trusted-ca-file".into(),
            s("good-ca.pem"),
            "--client-cert-auth".into(),
        ],
    );
    let url = m.client_url.clone();
    let good = EtcdStore::new(&options(&url, Some(p("good-ca.pem")), Some((p("good-client.pem"), p("good-client.key"))))).expect("options");
    let start = Instant::now();
    loop {
        match good.put("/tls/k", b"v", None).await {
            Ok(_) => break,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(15), "no answer over https: {e}\n{}", m.log()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(good.get_prefix("/tls/").await.expect("get over https").kvs.len(), 1);
    let mut w = good.watch("/tls/", 0).await.expect("watch over https");
    assert!(w.next().await.expect("watch").is_some());

    // No client certificate: etcd refuses the connection.
    let anon = EtcdStore::new(&options(&url, Some(p("good-ca.pem")), None)).expect("options");
    assert!(anon.get_prefix("/tls/").await.is_err());
    // A server certificate from a CA not trusted: the client refuses.
    let wrong_ca =
        EtcdStore::new(&options(&url, Some(p("other-ca.pem")), Some((p("good-client.pem"), p("good-client.key"))))).expect("options");
    let e = wrong_ca.get_prefix("/tls/").await.unwrap_err();
    assert!(format!("{e}").to_lowercase().contains("certificate"), "{e}");
    // A client certificate from another CA: etcd refuses.
    let wrong_client =
        EtcdStore::new(&options(&url, Some(p("good-ca.pem")), Some((p("other-client.pem"), p("other-client.key"))))).expect("options");
    assert!(wrong_client.get_prefix("/tls/").await.is_err());
    // Plain http to the https port.
    let plain = EtcdStore::new(&options(&url.replace("https://", "http://"), None, None)).expect("options");
    assert!(plain.get_prefix("/tls/").await.is_err());
    // A key file that holds no key.
    let bad_key = EtcdStore::new(&options(&url, Some(p("good-ca.pem")), Some((p("good-client.pem"), p("good-client.pem")))));
    assert!(bad_key.is_err());
}

/// The certificates pgrepl makes itself (`pgrepl_etcd::pki`) for the etcd it deploys: a
/// member with peer and client TLS and client-cert-auth accepts the admin's and an
/// agent's certificates, including ones signed after the CA was read back from its files,
/// and refuses a client of another cluster's CA.
#[tokio::test]
async fn pgrepls_own_ca_and_certificates_work_with_etcd() {
    use pgrepl_etcd::pki::AdminPki;
    let state = tempfile::tempdir().expect("tempdir");
    let admin = AdminPki::in_state_dir(state.path());
    admin.load_or_create("geo", true).expect("the CA");
    // Read back from the files, as a later `pgrepl up` does.
    let ca = admin.load_or_create("geo", false).expect("the CA again");
    let member = ca.issue_member("solo", &["127.0.0.1".into()]).expect("member certificate");
    let agent = ca.issue_client("pgrepl geo agent d").expect("client certificate");
    let other = AdminPki::in_state_dir(&state.path().join("other")).load_or_create("other", true).expect("another CA");
    let stranger = other.issue_client("stranger").expect("client certificate");
    let d = state.path();
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).expect("write");
        d.join(name)
    };
    let mcert = write("member.crt", &member.cert_pem);
    let mkey = write("member.key", member.key_pem.expose());
    let acert = write("agent.crt", &agent.cert_pem);
    let akey = write("agent.key", agent.key_pem.expose());
    let scert = write("stranger.crt", &stranger.cert_pem);
    let skey = write("stranger.key", stranger.key_pem.expose());
    let s = |p: &PathBuf| p.display().to_string();
    let tls = [
        "--cert-file".to_string(),
        s(&mcert),
        "--key-file".into(),
        s(&mkey),
        "--trusted-ca-file".into(),
        s(&admin.ca_cert()),
        "--client-cert-auth".into(),
    ];
    let m = Member::start(23971, 23981, "https", &tls);
    let url = m.client_url.clone();
    let by_admin = EtcdStore::new(&options(&url, Some(admin.ca_cert()), Some((admin.admin_cert(), admin.admin_key())))).expect("options");
    let start = Instant::now();
    loop {
        match by_admin.put("/own/k", b"v", None).await {
            Ok(_) => break,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(15), "no answer over https: {e}\n{}", m.log()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_agent = EtcdStore::new(&options(&url, Some(admin.ca_cert()), Some((acert, akey)))).expect("options");
    assert_eq!(by_agent.get_prefix("/own/").await.expect("the agent's certificate is accepted").kvs.len(), 1);
    let by_stranger = EtcdStore::new(&options(&url, Some(admin.ca_cert()), Some((scert, skey)))).expect("options");
    assert!(by_stranger.get_prefix("/own/").await.is_err(), "a certificate of another CA is refused");
    // Without the cluster's CA, no https client at all (pgrepl never falls back to the
    // system's roots nor skips the check).
    assert!(EtcdStore::new(&options(&url, None, Some((admin.admin_cert(), admin.admin_key())))).is_err());
}
