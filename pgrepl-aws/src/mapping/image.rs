//! The image instances boot: the architecture of an instance type and of an image, and
//! which AMI to launch when the spec names none.

use std::fmt;

use aws_sdk_ec2::types::{Filter, Image};

use super::{CANONICAL_OWNER, UBUNTU_NAME_PATTERN, filter};

// ---------------------------------------------------------------------------------------
// Architecture

/// A CPU architecture as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `x86_64` (Ubuntu says `amd64`).
    X86_64,
    /// `arm64` (Graviton).
    Arm64,
}

impl Arch {
    /// EC2's name: `x86_64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The architecture of an instance type, from its name: Graviton families carry a `g`
/// after the generation digit (`t4g`, `m7g`, `c6gn`, `x2gd`, `im4gn`, `g5g`), plus `a1`
/// and the Apple-silicon `mac2*`. Everything else is x86_64.
pub fn arch_of_instance_type(instance_type: &str) -> Result<Arch, String> {
    let Some((family, size)) = instance_type.split_once('.') else {
        return Err(format!("\"{instance_type}\" is not an instance type (expected family.size, such as t4g.small)"));
    };
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid(family) || !valid(size) || !family.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("\"{instance_type}\" is not an instance type (expected family.size, such as t4g.small)"));
    }
    if family == "a1" || family.starts_with("mac2") {
        return Ok(Arch::Arm64);
    }
    // Attributes are the letters after the first run of digits: "t4g" -> "g", "c6gn" -> "gn".
    let attributes: String = family
        .trim_start_matches(|c: char| c.is_ascii_lowercase())
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    if attributes.contains('g') { Ok(Arch::Arm64) } else { Ok(Arch::X86_64) }
}

/// The architecture of an image, when EC2 reports one pgrepl knows.
pub fn arch_of_image(image: &Image) -> Option<Arch> {
    match image.architecture().map(|a| a.as_str()) {
        Some("x86_64") => Some(Arch::X86_64),
        Some("arm64") => Some(Arch::Arm64),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// AMI choice

/// How to find an AMI when the spec names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmiQuery {
    /// Owner account ids (or `self`, `amazon`).
    pub owners: Vec<String>,
    /// A name pattern with `*` wildcards.
    pub name_pattern: String,
    /// Keep only Ubuntu LTS releases (YY.04 with an even YY), newest release first.
    pub ubuntu_lts: bool,
}

impl Default for AmiQuery {
    /// The newest Ubuntu LTS server image from Canonical.
    fn default() -> Self {
        AmiQuery { owners: vec![CANONICAL_OWNER.into()], name_pattern: UBUNTU_NAME_PATTERN.into(), ubuntu_lts: true }
    }
}

impl fmt::Display for AmiQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "owner {} and name \"{}\"{}",
            self.owners.join(","),
            self.name_pattern,
            if self.ubuntu_lts { " (Ubuntu LTS)" } else { "" }
        )
    }
}

/// DescribeImages filters for `query` and `arch` (owners go in `Owners`).
pub fn ami_filters(query: &AmiQuery, arch: Arch) -> Vec<Filter> {
    vec![filter("name", &[&query.name_pattern]), filter("architecture", &[arch.as_str()]), filter("state", &["available"])]
}

/// The Ubuntu release in a Canonical image name, such as `(24, 4)` in
/// `ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250115`.
pub fn ubuntu_version(name: &str) -> Option<(u32, u32)> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix("ubuntu-")?;
    if !rest.contains("-server-") {
        return None;
    }
    rest.split('-').find_map(|part| {
        let (y, m) = part.split_once('.')?;
        if y.len() == 2 && m.len() == 2 { Some((y.parse().ok()?, m.parse().ok()?)) } else { None }
    })
}

/// Whether an Ubuntu release is an LTS (April of an even year).
pub fn is_ubuntu_lts((year, month): (u32, u32)) -> bool {
    month == 4 && year % 2 == 0
}

/// Chooses among `images` the one to launch: available, of `arch`, an EBS-backed HVM
/// image when EC2 says so; with `ubuntu_lts` only LTS releases and the newest release
/// wins; then the newest creation date; then the id (for determinism).
pub fn pick_image(images: &[Image], arch: Arch, ubuntu_lts: bool) -> Option<&Image> {
    images
        .iter()
        .filter(|i| arch_of_image(i) == Some(arch))
        .filter(|i| i.state().is_none_or(|s| s.as_str() == "available"))
        .filter(|i| i.root_device_type().is_none_or(|t| t.as_str() == "ebs"))
        .filter(|i| i.virtualization_type().is_none_or(|t| t.as_str() == "hvm"))
        .filter_map(|i| {
            let version = ubuntu_version(i.name().unwrap_or(""));
            if ubuntu_lts { version.filter(|v| is_ubuntu_lts(*v)).map(|v| (i, Some(v))) } else { Some((i, None)) }
        })
        .max_by(|(a, va), (b, vb)| {
            va.cmp(vb).then_with(|| a.creation_date().cmp(&b.creation_date())).then_with(|| a.image_id().cmp(&b.image_id()))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{ArchitectureValues, DeviceType, ImageState, VirtualizationType};

    fn image(id: &str, name: &str, arch: &str, date: &str) -> Image {
        Image::builder()
            .image_id(id)
            .name(name)
            .architecture(ArchitectureValues::from(arch))
            .creation_date(date)
            .state(ImageState::Available)
            .root_device_type(DeviceType::Ebs)
            .virtualization_type(VirtualizationType::Hvm)
            .build()
    }

    #[test]
    fn instance_type_architectures() {
        for t in [
            "t4g.small",
            "t4g.nano",
            "m7g.large",
            "c6gn.xlarge",
            "x2gd.medium",
            "im4gn.large",
            "is4gen.large",
            "g5g.xlarge",
            "r8g.large",
            "hpc7g.4xlarge",
            "a1.medium",
            "mac2.metal",
            "mac2-m2pro.metal",
        ] {
            assert_eq!(arch_of_instance_type(t), Ok(Arch::Arm64), "{t}");
        }
        for t in [
            "t3.small",
            "t2.micro",
            "m5.large",
            "m7i.large",
            "g5.xlarge",
            "m5zn.large",
            "r7iz.large",
            "c5n.large",
            "mac1.metal",
            "inf2.xlarge",
            "u-6tb1.metal",
        ] {
            assert_eq!(arch_of_instance_type(t), Ok(Arch::X86_64), "{t}");
        }
        for bad in ["t4g", "", ".small", "T4G.small", "t4g.", "4g.small"] {
            let e = arch_of_instance_type(bad).unwrap_err();
            assert!(e.contains("not an instance type"), "{bad}: {e}");
        }
    }

    #[test]
    fn ubuntu_versions_and_lts() {
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250115"), Some((24, 4)));
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-20170727"), Some((14, 4)));
        assert_eq!(ubuntu_version("al2023-ami-2023.6-arm64"), None);
        assert_eq!(ubuntu_version("ubuntu/images/hvm-ssd/ubuntu-noble-24.04-amd64-minimal-2024"), None);
        assert!(is_ubuntu_lts((24, 4)));
        assert!(is_ubuntu_lts((22, 4)));
        assert!(!is_ubuntu_lts((23, 4)));
        assert!(!is_ubuntu_lts((24, 10)));
    }

    #[test]
    fn newest_lts_of_the_right_architecture_wins() {
        let images = vec![
            image("ami-jammy-arm", "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-20250101", "arm64", "2025-01-01T00:00:00.000Z"),
            image(
                "ami-noble-arm-old",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20240601",
                "arm64",
                "2024-06-01T00:00:00.000Z",
            ),
            image(
                "ami-noble-arm",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250110",
                "arm64",
                "2025-01-10T00:00:00.000Z",
            ),
            image(
                "ami-oracular-arm",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-oracular-24.10-arm64-server-20250201",
                "arm64",
                "2025-02-01T00:00:00.000Z",
            ),
            image(
                "ami-noble-amd",
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250301",
                "x86_64",
                "2025-03-01T00:00:00.000Z",
            ),
        ];
        let arm = pick_image(&images, Arch::Arm64, true).unwrap();
        assert_eq!(arm.image_id(), Some("ami-noble-arm"));
        let amd = pick_image(&images, Arch::X86_64, true).unwrap();
        assert_eq!(amd.image_id(), Some("ami-noble-amd"));
        // Without the LTS rule the newest image of the architecture wins.
        let any = pick_image(&images, Arch::Arm64, false).unwrap();
        assert_eq!(any.image_id(), Some("ami-oracular-arm"));
        // Nothing of the architecture: none.
        assert!(pick_image(&images[..4], Arch::X86_64, true).is_none());
        // An image that is not available yet is not chosen.
        let pending = Image::builder()
            .image_id("ami-new")
            .name("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20260101")
            .architecture(ArchitectureValues::Arm64)
            .creation_date("2026-01-01T00:00:00.000Z")
            .state(ImageState::Pending)
            .build();
        let mut with_pending = images.clone();
        with_pending.push(pending);
        assert_eq!(pick_image(&with_pending, Arch::Arm64, true).unwrap().image_id(), Some("ami-noble-arm"));
    }

    #[test]
    fn ami_query_default_is_canonical_ubuntu() {
        let q = AmiQuery::default();
        assert_eq!(q.owners, vec![CANONICAL_OWNER.to_string()]);
        assert!(q.ubuntu_lts);
        let f = ami_filters(&q, Arch::Arm64);
        let names: Vec<_> = f.iter().map(|f| f.name().unwrap()).collect();
        assert_eq!(names, ["name", "architecture", "state"]);
        assert_eq!(f[1].values(), ["arm64"]);
        assert_eq!(f[0].values(), [UBUNTU_NAME_PATTERN]);
        assert!(q.to_string().contains("099720109477"));
    }
}
