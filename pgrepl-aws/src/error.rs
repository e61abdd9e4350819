//! Errors of the EC2 provider.
//!
//! Convention (as in `pgrepl_core::error`): a variant's message describes *this* layer
//! (what pgrepl was doing, on which AWS resource, and the AWS error code) and the cause
//! goes in `#[source]`. For answers of the EC2 API the cause is an [`AwsError`] holding
//! AWS's own words and request id; for failures before an answer (network, timeouts,
//! credentials) it is the SDK's error itself. Nothing here ever holds a secret: AWS error
//! messages carry no keys, and credentials are never formatted.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A boxed cause.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What the EC2 API answered: its error code, message and request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The AWS error code, such as `InvalidAMIID.NotFound`.
    pub code: String,
    /// AWS's message, if it gave one.
    pub message: Option<String>,
    /// The request id, for AWS support.
    pub request_id: Option<String>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AWS said {}", self.code)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " (request id {r})")?;
        }
        Ok(())
    }
}

impl StdError for AwsError {}

/// Why the EC2 provider could not build, create, list or destroy hosts.
///
/// Errors that come from an EC2 answer name the resource and carry the AWS error code
/// (see [`code`](Self::code)); [`is_retryable`](Self::is_retryable) says whether trying
/// again later may help. Turn one into a `pgrepl_core::Error` with
/// [`into_core`](Self::into_core) (or `?`, through `From`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No region in the builder, the spec or the AWS environment.
    #[error("no AWS region: set provider.region in the spec, AWS_REGION in the environment, or a region in the AWS profile")]
    MissingRegion,

    /// A setting is missing or wrong (named by its pgrepl.toml path when it has one).
    #[error("{field}: {problem}")]
    Config {
        /// `provider.admin_cidr`, `provider.ssh_public_key_file`, ...
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },

    /// The SSH public key file could not be read.
    #[error("cannot read the SSH public key file {}", .path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// No credentials could be found (environment, profile, SSO, web identity, instance role).
    #[error(
        "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, run `aws sso login`, or run where an instance or task role is available"
    )]
    NoCredentials {
        /// What the credential chain reported.
        #[source]
        source: BoxError,
    },

    /// AWS rejected the credentials (unknown key, bad signature, expired token).
    #[error(
        "AWS rejected the credentials ({code}) when trying to {action}: check the access key, secret and session token (an expired SSO session needs `aws sso login`)"
    )]
    AuthFailure {
        /// What pgrepl was doing.
        action: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// The identity lacks an IAM permission.
    #[error("not authorized to {action} {resource} ({code}): the AWS identity lacks the IAM permission")]
    Unauthorized {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// The resource does not exist (in this region and account).
    #[error("{resource} does not exist ({code}) when trying to {action}")]
    NotFound {
        /// What pgrepl was doing.
        action: String,
        /// The resource, such as `AMI ami-0123`.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// A service quota or the available capacity was exceeded.
    #[error(
        "cannot {action} {resource}: AWS quota or capacity exceeded ({code}); raise the service quota, or choose another instance type or zone"
    )]
    Quota {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// AWS throttled the requests (retryable).
    #[error("AWS throttled the requests ({code}) when trying to {action} {resource}")]
    Throttled {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// The resource is still in use (`DependencyViolation`); usually retryable.
    #[error("cannot {action} {resource}: it is still in use ({code})")]
    InUse {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// The resource already exists.
    #[error("cannot {action} {resource}: it already exists ({code})")]
    AlreadyExists {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// A dry run: AWS says the request would have succeeded (`DryRunOperation`).
    #[error("dry run: AWS would {action} {resource} ({code})")]
    DryRun {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code (`DryRunOperation`).
        code: String,
    },

    /// Any other error answer of the EC2 API.
    #[error("cannot {action} {resource} ({code})")]
    Aws {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The AWS error code.
        code: String,
        /// AWS's answer.
        #[source]
        source: Box<AwsError>,
    },

    /// The EC2 endpoint could not be reached (DNS, connection, TLS).
    #[error("cannot reach the EC2 API at {endpoint} to {action} {resource}")]
    Unreachable {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The endpoint tried.
        endpoint: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },

    /// The EC2 API did not answer in time.
    #[error("the EC2 API at {endpoint} did not answer in time to {action} {resource}")]
    ApiTimeout {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The endpoint tried.
        endpoint: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },

    /// The SDK failed otherwise (could not build the request, could not read the answer).
    #[error("AWS SDK failure trying to {action} {resource}")]
    Sdk {
        /// What pgrepl was doing.
        action: String,
        /// The resource.
        resource: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },

    /// pgrepl refuses to go on: what it found in AWS does not fit (an AMI of the wrong
    /// architecture, two instances for one node, no default VPC, ...).
    #[error("{resource}: {problem}")]
    Invalid {
        /// The resource.
        resource: String,
        /// What is wrong and what to do.
        problem: String,
    },

    /// A bounded wait ran out.
    #[error("timed out after {}s waiting for {waiting_for} (last seen: {last})", .waited.as_secs())]
    Timeout {
        /// What pgrepl waited for.
        waiting_for: String,
        /// How long it waited.
        waited: Duration,
        /// The last state seen.
        last: String,
    },
}

impl ProviderError {
    /// The AWS error code, when the error is an answer of the EC2 API.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProviderError::AuthFailure { code, .. }
            | ProviderError::Unauthorized { code, .. }
            | ProviderError::NotFound { code, .. }
            | ProviderError::Quota { code, .. }
            | ProviderError::Throttled { code, .. }
            | ProviderError::InUse { code, .. }
            | ProviderError::AlreadyExists { code, .. }
            | ProviderError::DryRun { code, .. }
            | ProviderError::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Throttled { .. }
            | ProviderError::InUse { .. }
            | ProviderError::Unreachable { .. }
            | ProviderError::ApiTimeout { .. }
            | ProviderError::Timeout { .. } => true,
            ProviderError::Aws { code, .. } => crate::mapping::is_transient_code(code),
            _ => false,
        }
    }

    /// This error as a `pgrepl_core::Error::Provider` for `action` (such as
    /// "ensure hosts of cluster demo").
    pub fn into_core(self, action: impl Into<String>) -> pgrepl_core::Error {
        pgrepl_core::Error::Provider { provider: "aws".into(), action: action.into(), source: Box::new(self) }
    }
}

impl From<ProviderError> for pgrepl_core::Error {
    fn from(e: ProviderError) -> Self {
        e.into_core("EC2")
    }
}
