//! [`provider_suite`]: the conformance suite of [`Provider`] implementations.

use std::collections::BTreeSet;

use crate::cluster::Cluster;
use crate::provider::{Host, Provider};

/// Whether a provider creates its hosts or is handed existing ones; the suite checks the
/// lifecycle that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLifecycle {
    /// `ensure_hosts` creates the hosts and `destroy_hosts` removes them (the local
    /// provider, EC2): nothing is listed before `ensure_hosts` or after `destroy_hosts`.
    Creates,
    /// The hosts exist before and after pgrepl (existing hosts over SSH): every node is
    /// listed all along and `destroy_hosts` removes no host.
    Existing,
}

/// What identifies a host across calls (its state word may change): node, address, admin
/// address, id.
type Identity = (String, Option<String>, Option<String>, Option<String>);

fn identity(h: &Host) -> Identity {
    (h.node.clone(), h.address.clone(), h.admin_address.clone(), h.id.clone())
}

fn identities(hosts: &[Host]) -> Vec<Identity> {
    hosts.iter().map(identity).collect()
}

struct Checker<'a> {
    p: &'a dyn Provider,
}

impl Checker<'_> {
    async fn list(&self, c: &Cluster, when: &str) -> Vec<Host> {
        match self.p.list_hosts(c).await {
            Ok(h) => h,
            Err(e) => panic!("{} provider: list_hosts({}) {when} failed: {e}", self.p.kind(), c.name),
        }
    }

    async fn ensure(&self, c: &Cluster, when: &str) -> Vec<Host> {
        match self.p.ensure_hosts(c).await {
            Ok(h) => h,
            Err(e) => panic!("{} provider: ensure_hosts({}) {when} failed: {e}", self.p.kind(), c.name),
        }
    }

    async fn destroy(&self, c: &Cluster, when: &str) {
        if let Err(e) = self.p.destroy_hosts(c).await {
            panic!("{} provider: destroy_hosts({}) {when} failed: {e}", self.p.kind(), c.name);
        }
    }

    /// One host per node, in node order, each with an address and a state.
    fn every_node(&self, c: &Cluster, hosts: &[Host], what: &str) {
        let kind = self.p.kind();
        let names: Vec<&str> = hosts.iter().map(|h| h.node.as_str()).collect();
        let want: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, want, "{kind} provider: {what} of {}: one host per node, in node order: {hosts:#?}", c.name);
        for h in hosts {
            assert!(
                h.address.as_deref().is_some_and(|a| !a.trim().is_empty()),
                "{kind} provider: {what} of {}: node {} has no address: {h:?}",
                c.name,
                h.node
            );
            assert!(!h.state.trim().is_empty(), "{kind} provider: {what} of {}: node {} has no state: {h:?}", c.name, h.node);
            if let Some(id) = &h.id {
                assert!(!id.trim().is_empty(), "{kind} provider: {what} of {}: node {} has an empty id", c.name, h.node);
            }
        }
        let ids: Vec<&String> = hosts.iter().filter_map(|h| h.id.as_ref()).collect();
        let unique: BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "{kind} provider: {what} of {}: two nodes share a host id: {hosts:#?}", c.name);
    }

    fn same(&self, c: &Cluster, got: &[Host], want: &[Host], what: &str) {
        assert_eq!(
            identities(got),
            identities(want),
            "{} provider: {what} of {}: the hosts changed (node, address, admin address, id)",
            self.p.kind(),
            c.name
        );
    }
}

/// Runs the provider conformance suite; panics (naming the provider kind, the cluster and
/// the step) on the first broken promise.
///
/// - `cluster`: a validated cluster the provider can hold; for [`HostLifecycle::Creates`]
///   it must not exist yet (a fresh name).
/// - `neighbour`: another cluster the same provider holds next to it (another name; for
///   the local provider, whose hosts are node directories of one work directory, other
///   node names too). It proves that destroying `cluster` leaves it alone.
///
/// It checks, in this order: listing before `ensure_hosts` (nothing for `Creates`, every
/// node for `Existing`); `ensure_hosts` returns one host per node, in node order, each
/// with an address and a state, distinct ids; a second `ensure_hosts` creates nothing and
/// returns the same hosts (node, address, admin address, id); `list_hosts` then returns
/// them too; the neighbour's hosts are other hosts; `destroy_hosts` of `cluster` removes
/// its hosts (for `Creates`; for `Existing` they are still listed) and leaves the
/// neighbour's as they were; a second `destroy_hosts` succeeds and changes nothing.
/// Finally the neighbour is destroyed too, so a `Creates` provider is left with nothing
/// of either cluster.
///
/// ```no_run
/// # async fn demo(cluster: pgrepl_core::Cluster, neighbour: pgrepl_core::Cluster) {
/// use pgrepl_core::local::LocalProvider;
/// use pgrepl_core::testing::{HostLifecycle, provider_suite};
///
/// let p = LocalProvider::new("/tmp/pgrepl-provider-suite", "postgres");
/// provider_suite(&p, &cluster, &neighbour, HostLifecycle::Creates).await;
/// # }
/// ```
pub async fn provider_suite(p: &dyn Provider, cluster: &Cluster, neighbour: &Cluster, lifecycle: HostLifecycle) {
    let kind = p.kind();
    assert!(!kind.is_empty(), "a provider names its kind");
    assert_ne!(cluster.name, neighbour.name, "provider_suite needs two clusters with different names");
    let ck = Checker { p };
    let creates = lifecycle == HostLifecycle::Creates;

    // Before anything is ensured.
    for c in [cluster, neighbour] {
        let before = ck.list(c, "before ensure_hosts").await;
        if creates {
            assert!(before.is_empty(), "{kind} provider: list_hosts({}) of a fresh cluster lists hosts: {before:#?}", c.name);
        } else {
            ck.every_node(c, &before, "list_hosts before ensure_hosts");
        }
    }

    // Ensure, twice.
    let first = ck.ensure(cluster, "(first)").await;
    ck.every_node(cluster, &first, "ensure_hosts");
    let second = ck.ensure(cluster, "(second)").await;
    ck.every_node(cluster, &second, "the second ensure_hosts");
    ck.same(cluster, &second, &first, "a second ensure_hosts (it must create nothing)");
    let listed = ck.list(cluster, "after ensure_hosts").await;
    ck.same(cluster, &listed, &first, "list_hosts after ensure_hosts");

    // A neighbour next to it.
    let theirs = ck.ensure(neighbour, "(the neighbour)").await;
    ck.every_node(neighbour, &theirs, "ensure_hosts");
    if creates {
        let ours: BTreeSet<&String> = first.iter().filter_map(|h| h.id.as_ref()).collect();
        let shared: Vec<&String> = theirs.iter().filter_map(|h| h.id.as_ref()).filter(|id| ours.contains(id)).collect();
        assert!(shared.is_empty(), "{kind} provider: clusters {} and {} share hosts {shared:?}", cluster.name, neighbour.name);
    }
    let listed = ck.list(cluster, "after the neighbour's ensure_hosts").await;
    ck.same(cluster, &listed, &first, "list_hosts after the neighbour was ensured");

    // Destroy ours: the neighbour stays as it was.
    ck.destroy(cluster, "(first)").await;
    let after = ck.list(cluster, "after destroy_hosts").await;
    if creates {
        assert!(after.is_empty(), "{kind} provider: destroy_hosts({}) left hosts: {after:#?}", cluster.name);
    } else {
        ck.same(cluster, &after, &first, "list_hosts after destroy_hosts (existing hosts are not destroyed)");
    }
    let still = ck.list(neighbour, "after the other cluster was destroyed").await;
    ck.same(neighbour, &still, &theirs, "list_hosts after another cluster was destroyed (destroy_hosts touched it)");
    ck.destroy(cluster, "(again: it must be idempotent)").await;
    let again = ck.list(cluster, "after a second destroy_hosts").await;
    ck.same(cluster, &again, &after, "list_hosts after a second destroy_hosts");
    let still = ck.list(neighbour, "after a second destroy of the other cluster").await;
    ck.same(neighbour, &still, &theirs, "list_hosts after a second destroy_hosts of another cluster");

    // Clean up the neighbour.
    ck.destroy(neighbour, "(the neighbour)").await;
    let left = ck.list(neighbour, "after destroy_hosts").await;
    if creates {
        assert!(left.is_empty(), "{kind} provider: destroy_hosts({}) left hosts: {left:#?}", neighbour.name);
    } else {
        ck.same(neighbour, &left, &theirs, "list_hosts after destroy_hosts (existing hosts are not destroyed)");
    }
}
