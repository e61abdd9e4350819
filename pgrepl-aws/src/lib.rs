//! pgrepl-aws: an EC2 [`Provider`](pgrepl_core::provider::Provider) over aws-sdk-ec2.
//!
//! Not implemented yet: see the EC2 provisioning issue. This crate is a member of the
//! workspace so that its dependency line (aws-sdk-ec2 stays out of pgrepl-core) is fixed early.
