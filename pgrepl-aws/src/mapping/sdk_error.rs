//! SDK errors → [`ProviderError`]: what an AWS error code means to pgrepl, and an error
//! naming the action, the resource and, for EC2 answers, the code.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::error::{AwsError, BoxError, ProviderError};

// ---------------------------------------------------------------------------------------
// Errors

/// What an AWS error code means to pgrepl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The credentials were rejected.
    Auth,
    /// A missing IAM permission.
    Unauthorized,
    /// The resource does not exist.
    NotFound,
    /// A quota or capacity limit.
    Quota,
    /// Throttling.
    Throttled,
    /// Still in use.
    InUse,
    /// Already exists.
    Duplicate,
    /// A successful dry run.
    DryRun,
    /// Anything else.
    Other,
}

/// Classifies an AWS error code.
pub fn classify(code: &str) -> ErrorClass {
    match code {
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "IncompleteSignature"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "MissingAuthenticationToken" => ErrorClass::Auth,
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" | "OptInRequired" | "Blocked" => ErrorClass::Unauthorized,
        "DryRunOperation" => ErrorClass::DryRun,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorClass::Throttled,
        "DependencyViolation" | "InvalidGroup.InUse" => ErrorClass::InUse,
        c if c.ends_with(".Duplicate") || c == "AlreadyExists" => ErrorClass::Duplicate,
        c if c.ends_with(".NotFound") || c.ends_with("NotFound") || c.starts_with("InvalidAMIID.") => ErrorClass::NotFound,
        c if c.ends_with("LimitExceeded")
            || c.starts_with("Insufficient")
            || c == "MaxSpotInstanceCountExceeded"
            || c == "ResourceLimitExceeded" =>
        {
            ErrorClass::Quota
        }
        _ => ErrorClass::Other,
    }
}

/// Codes of server-side trouble worth retrying.
pub fn is_transient_code(code: &str) -> bool {
    matches!(code, "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable") || classify(code) == ErrorClass::Throttled
}

fn chain_mentions(e: &(dyn StdError + 'static), words: &[&str]) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    // The chain is finite; the bound only guards against a cyclic `source()`.
    for _ in 0..32 {
        let Some(err) = cur else { break };
        let text = err.to_string().to_ascii_lowercase();
        if words.iter().any(|w| text.contains(w)) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Maps an SDK error of `action` on `resource` (at `endpoint`) to a [`ProviderError`]
/// naming both and, for EC2 answers, the AWS error code.
pub fn map_sdk_error<E, R>(err: SdkError<E, R>, action: &str, resource: &str, endpoint: &str) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let (action, resource, endpoint) = (action.to_string(), resource.to_string(), endpoint.to_string());
    match err {
        SdkError::ServiceError(se) => {
            let e = se.into_err();
            let aws = AwsError {
                code: e.code().unwrap_or("Unknown").to_string(),
                message: e.message().map(str::to_string),
                request_id: e.meta().extra("aws_request_id").map(str::to_string),
            };
            from_aws(aws, action, resource)
        }
        SdkError::TimeoutError(_) => ProviderError::ApiTimeout { action, resource, endpoint, source: Box::new(err) },
        SdkError::DispatchFailure(ref d) => {
            if d.is_timeout() {
                ProviderError::ApiTimeout { action, resource, endpoint, source: Box::new(err) }
            } else if !d.is_io() && chain_mentions(&err, &["credential", "identity"]) {
                ProviderError::NoCredentials { source: Box::new(err) }
            } else {
                ProviderError::Unreachable { action, resource, endpoint, source: Box::new(err) }
            }
        }
        other => {
            if chain_mentions(&other, &["region must be set", "no region"]) {
                ProviderError::MissingRegion
            } else {
                let source: BoxError = Box::new(other);
                ProviderError::Sdk { action, resource, source }
            }
        }
    }
}

/// Maps an EC2 error answer.
pub fn from_aws(aws: AwsError, action: String, resource: String) -> ProviderError {
    let code = aws.code.clone();
    let aws = Box::new(aws);
    match classify(&code) {
        ErrorClass::Auth => ProviderError::AuthFailure { action: format!("{action} {resource}"), code, source: aws },
        ErrorClass::Unauthorized => ProviderError::Unauthorized { action, resource, code, source: aws },
        ErrorClass::NotFound => ProviderError::NotFound { action, resource, code, source: aws },
        ErrorClass::Quota => ProviderError::Quota { action, resource, code, source: aws },
        ErrorClass::Throttled => ProviderError::Throttled { action, resource, code, source: aws },
        ErrorClass::InUse => ProviderError::InUse { action, resource, code, source: aws },
        ErrorClass::Duplicate => ProviderError::AlreadyExists { action, resource, code, source: aws },
        ErrorClass::DryRun => ProviderError::DryRun { action, resource, code },
        ErrorClass::Other => ProviderError::Aws { action, resource, code, source: aws },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ec2::operation::describe_images::DescribeImagesError;

    fn service_error(code: &str, message: &str) -> SdkError<DescribeImagesError, ()> {
        let meta = ErrorMetadata::builder().code(code).message(message).custom("aws_request_id", "req-1").build();
        SdkError::service_error(DescribeImagesError::generic(meta), ())
    }

    #[test]
    fn sdk_errors_map_to_errors_naming_resource_and_code() {
        let ep = "http://127.0.0.1:5000";
        type Case = (&'static str, &'static str, fn(&ProviderError) -> bool, &'static [&'static str]);
        let cases: Vec<Case> = vec![
            (
                "AuthFailure",
                "AWS was not able to validate the provided access credentials",
                |e| matches!(e, ProviderError::AuthFailure { .. }),
                &["rejected the credentials", "AuthFailure", "AMI ami-1"],
            ),
            (
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
                |e| matches!(e, ProviderError::Unauthorized { .. }),
                &["not authorized", "AMI ami-1", "UnauthorizedOperation", "IAM"],
            ),
            (
                "InvalidAMIID.NotFound",
                "The image id '[ami-1]' does not exist",
                |e| matches!(e, ProviderError::NotFound { .. }),
                &["AMI ami-1 does not exist", "InvalidAMIID.NotFound"],
            ),
            (
                "InstanceLimitExceeded",
                "You have requested more instances than your current instance limit",
                |e| matches!(e, ProviderError::Quota { .. }),
                &["quota", "InstanceLimitExceeded", "AMI ami-1"],
            ),
            ("VcpuLimitExceeded", "vCPU limit", |e| matches!(e, ProviderError::Quota { .. }), &["VcpuLimitExceeded"]),
            ("InsufficientInstanceCapacity", "no capacity", |e| matches!(e, ProviderError::Quota { .. }), &["capacity"]),
            (
                "RequestLimitExceeded",
                "Request limit exceeded.",
                |e| matches!(e, ProviderError::Throttled { .. }) && e.is_retryable(),
                &["throttled", "RequestLimitExceeded"],
            ),
            (
                "DryRunOperation",
                "Request would have succeeded, but DryRun flag is set.",
                |e| matches!(e, ProviderError::DryRun { .. }),
                &["dry run", "DryRunOperation"],
            ),
            (
                "DependencyViolation",
                "resource sg-1 has a dependent object",
                |e| matches!(e, ProviderError::InUse { .. }) && e.is_retryable(),
                &["in use", "DependencyViolation"],
            ),
            ("InvalidKeyPair.Duplicate", "exists", |e| matches!(e, ProviderError::AlreadyExists { .. }), &["already exists"]),
            (
                "InvalidParameterValue",
                "Invalid value 'x' for instanceType",
                |e| matches!(e, ProviderError::Aws { .. }) && !e.is_retryable(),
                &["InvalidParameterValue", "AMI ami-1"],
            ),
            ("InternalError", "oops", |e| matches!(e, ProviderError::Aws { .. }) && e.is_retryable(), &["InternalError"]),
        ];
        for (code, message, is, words) in cases {
            let e = map_sdk_error(service_error(code, message), "describe", "AMI ami-1", ep);
            assert!(is(&e), "{code}: {e:?}");
            assert_eq!(e.code(), Some(code));
            let text = pgrepl_core::error::chain(&e);
            for w in words {
                assert!(text.contains(w), "{code}: {text:?} lacks {w:?}");
            }
            if code != "DryRunOperation" {
                assert!(text.contains(message), "{code}: AWS's words are in the chain: {text}");
                assert!(text.contains("req-1"), "{code}: request id in the chain: {text}");
            }
        }
    }

    #[test]
    fn transport_failures_name_the_endpoint() {
        let ep = "http://127.0.0.1:1";
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::dispatch_failure(ConnectorError::io(Box::new(io))),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains(ep), "{e}");
        assert!(pgrepl_core::error::chain(&e).contains("connection refused"));
        assert!(e.is_retryable());

        let e = map_sdk_error(SdkError::<DescribeImagesError, ()>::timeout_error("took too long"), "describe", "images", ep);
        assert!(matches!(e, ProviderError::ApiTimeout { .. }), "{e:?}");
        assert!(e.to_string().contains("did not answer in time"));

        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::dispatch_failure(ConnectorError::other(
                "failed to load credentials: no providers in chain provided credentials".into(),
                None,
            )),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::NoCredentials { .. }), "{e:?}");
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");

        let e = map_sdk_error(
            SdkError::<DescribeImagesError, ()>::construction_failure("A region must be set when sending requests to EC2."),
            "describe",
            "images",
            ep,
        );
        assert!(matches!(e, ProviderError::MissingRegion), "{e:?}");
        assert!(e.to_string().contains("AWS_REGION"));
    }

    #[test]
    fn provider_errors_become_core_provider_errors() {
        let e = map_sdk_error(service_error("AuthFailure", "bad key"), "describe", "images", "x");
        let core = e.into_core("ensure hosts of cluster demo");
        match &core {
            pgrepl_core::Error::Provider { provider, action, source } => {
                assert_eq!(provider, "aws");
                assert_eq!(action, "ensure hosts of cluster demo");
                assert!(source.to_string().contains("AuthFailure"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(core.to_string(), "provider aws: ensure hosts of cluster demo");
        let via_from: pgrepl_core::Error = ProviderError::MissingRegion.into();
        assert!(matches!(via_from, pgrepl_core::Error::Provider { .. }));
    }
}
