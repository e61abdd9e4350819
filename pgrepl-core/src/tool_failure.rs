//! What a failed backup tool run means, named (below `error` and `backup`, which both use it): the tools print Python tracebacks and S3 error
//! codes; pgrepl says which of the usual causes it was.

use std::fmt;

use serde::Serialize;

/// The cause of a backup tool's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFailure {
    /// The store refused the credentials (or found none).
    BadCredentials,
    /// The bucket does not exist.
    NoBucket,
    /// The endpoint could not be reached.
    Unreachable,
    /// The endpoint's TLS certificate is not trusted (pgBackRest verifies it).
    TlsNotTrusted,
    /// The tool is not installed where the spec says.
    NotInstalled,
    /// Anything else (the tool's own words follow).
    Other,
}

impl fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ToolFailure::BadCredentials => {
                "the object store refused the credentials (check the AWS configuration the tool reads: backup.credentials_file, backup.profile, the environment or the instance role)"
            }
            ToolFailure::NoBucket => "the bucket does not exist (backup.bucket)",
            ToolFailure::Unreachable => "the object store cannot be reached (backup.endpoint, backup.region, the network)",
            ToolFailure::TlsNotTrusted => "the object store's TLS certificate is not trusted (backup.ca_file, backup.endpoint)",
            ToolFailure::NotInstalled => "the backup tool is not installed (backup.bin_dir; `pgrepl up` installs it)",
            ToolFailure::Other => "the backup tool failed",
        })
    }
}

/// Names the cause from the tool's exit status and output.
pub fn classify_failure(status: i32, output: &str) -> ToolFailure {
    let o = output;
    if status == 127 || o.contains("No such file or directory") && o.contains("barman-cloud") {
        return ToolFailure::NotInstalled;
    }
    let any = |needles: &[&str]| needles.iter().any(|n| o.contains(n));
    if any(&[
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoCredentialsError",
        "Unable to locate credentials",
        "AccessDenied",
        "ExpiredToken",
    ]) {
        ToolFailure::BadCredentials
    } else if any(&[
        "unable to verify certificate",
        "CERTIFICATE_VERIFY_FAILED",
        "certificate verify failed",
        // pgBackRest: the certificate does not name the endpoint's host.
        "in certificate common name or subject alternative names",
    ]) {
        ToolFailure::TlsNotTrusted
    } else if any(&["NoSuchBucket", "does not exist", "Bucket not found"]) {
        ToolFailure::NoBucket
    } else if any(&[
        "EndpointConnectionError",
        "Could not connect to the endpoint",
        "Connection refused",
        "ConnectTimeout",
        "Name or service not known",
    ]) {
        ToolFailure::Unreachable
    } else {
        ToolFailure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named() {
        assert_eq!(
            classify_failure(1, "botocore.exceptions.ClientError: An error occurred (InvalidAccessKeyId)"),
            ToolFailure::BadCredentials
        );
        assert_eq!(classify_failure(1, "ERROR: Bucket pgrepl-x does not exist"), ToolFailure::NoBucket);
        assert_eq!(classify_failure(2, "Could not connect to the endpoint URL: \"http://127.0.0.1:1/b\""), ToolFailure::Unreachable);
        assert_eq!(classify_failure(127, "sh: 1: /x/barman-cloud-wal-archive: not found"), ToolFailure::NotInstalled);
        assert_eq!(classify_failure(1, "something else"), ToolFailure::Other);
        assert_eq!(
            classify_failure(
                95,
                "ERROR: [095]: unable to find hostname '127.0.0.1' in certificate common name or subject alternative names"
            ),
            ToolFailure::TlsNotTrusted
        );
        // pgBackRest 2.45's words (its `info` status messages against moto behind HAProxy).
        assert_eq!(classify_failure(1, "<Error><Code>NoSuchBucket</Code><Message>The specified bucket"), ToolFailure::NoBucket);
        assert_eq!(
            classify_failure(1, "[HostConnectError] unable to connect to '127.0.0.1:1': [111] Connection refused"),
            ToolFailure::Unreachable
        );
        assert_eq!(
            classify_failure(1, "[CryptoError] unable to verify certificate presented by '127.0.0.1:18443': [18] self-signed certificate"),
            ToolFailure::TlsNotTrusted
        );
    }
}
