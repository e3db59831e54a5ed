//! Container settings: `image`, `image_pull`, `shm_size`, `network` and
//! `read_only_root`, written at the top of the pipeline (the default of every
//! step) or on a step (its own). A step with an image runs in a container; the
//! other settings apply only to such a step, so one written where no image
//! applies is an error rather than silently ignored.

use serde_yaml::Value;

use super::checker::Checker;
use super::locate::Pos;
use super::raw::{describe_value, kind_of};
use super::types::{ContainerSpec, ImagePull, Network};
use super::units::parse_memory_bytes;

/// The longest image reference taken (Docker's own limit on a name is 255).
const MAX_IMAGE_REF: usize = 512;
/// The most shared memory a step may ask for.
const MAX_SHM_BYTES: u64 = 1 << 40;

/// The settings as written at one level, before the step's are laid over the
/// pipeline's.
#[derive(Debug, Clone, Default)]
pub(super) struct ContainerFields {
    image: Option<Set<String>>,
    pull: Option<Set<ImagePull>>,
    shm_size_bytes: Option<Set<u64>>,
    network: Option<Set<Network>>,
    read_only_root: Option<Set<bool>>,
}

/// A value and where it was written.
#[derive(Debug, Clone)]
struct Set<T> {
    value: T,
    at: Option<Pos>,
}

/// The raw values of one level.
pub(super) struct RawContainer<'a> {
    pub(super) image: &'a Option<Value>,
    pub(super) image_pull: &'a Option<Value>,
    pub(super) shm_size: &'a Option<Value>,
    pub(super) network: &'a Option<Value>,
    pub(super) read_only_root: &'a Option<Value>,
}

/// Checks the settings of one level: `whose` names it in messages ("step
/// \"train\"", "the pipeline"); `at` locates a key of it.
pub(super) fn check_container(
    ck: &Checker<'_>,
    whose: &str,
    at: impl Fn(&str) -> Option<Pos>,
    raw: RawContainer<'_>,
) -> ContainerFields {
    let mut fields = ContainerFields::default();
    if let Some(value) = raw.image {
        let pos = at("image");
        match value.as_str().map(str::trim) {
            Some(image) => match image_problem(image) {
                None => {
                    fields.image = Some(Set {
                        value: image.to_string(),
                        at: pos,
                    })
                }
                Some(why) => ck.error(pos, format!("image {image:?} of {whose} {why}")),
            },
            None => ck.error(
                pos,
                format!(
                    "image of {whose} must be an image reference such as \
                     \"python:3.11-slim\" or \"registry.example.com/team/train@sha256:...\", \
                     got {}",
                    kind_of(value)
                ),
            ),
        }
    }
    if let Some(value) = raw.image_pull {
        let pos = at("image_pull");
        let pull = match value.as_str() {
            Some("if-not-present") => Some(ImagePull::IfNotPresent),
            Some("always") => Some(ImagePull::Always),
            Some("never") => Some(ImagePull::Never),
            _ => None,
        };
        match pull {
            Some(value) => fields.pull = Some(Set { value, at: pos }),
            None => ck.error(
                pos,
                format!(
                    "image_pull of {whose} must be if-not-present, always or never, got {}",
                    describe_value(value)
                ),
            ),
        }
    }
    if let Some(value) = raw.shm_size {
        let pos = at("shm_size");
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match text.as_deref().map(parse_memory_bytes) {
            Some(Ok(bytes)) if (1..=MAX_SHM_BYTES).contains(&bytes) => {
                fields.shm_size_bytes = Some(Set {
                    value: bytes,
                    at: pos,
                })
            }
            Some(Ok(_)) => ck.error(
                pos,
                format!("shm_size of {whose} must be from 1 byte to 1Ti"),
            ),
            Some(Err(why)) => ck.error(pos, format!("shm_size of {whose}: {why}")),
            None => ck.error(
                pos,
                format!(
                    "shm_size of {whose} must be a size such as \"2Gi\" (the container's \
                     /dev/shm), got {}",
                    kind_of(value)
                ),
            ),
        }
    }
    if let Some(value) = raw.network {
        let pos = at("network");
        let network = match value.as_str() {
            Some("bridge") => Some(Network::Bridge),
            Some("none") => Some(Network::None),
            _ => None,
        };
        match network {
            Some(value) => fields.network = Some(Set { value, at: pos }),
            None => ck.error(
                pos,
                format!(
                    "network of {whose} must be bridge or none, got {}",
                    describe_value(value)
                ),
            ),
        }
    }
    if let Some(value) = raw.read_only_root {
        let pos = at("read_only_root");
        match value.as_bool() {
            Some(value) => fields.read_only_root = Some(Set { value, at: pos }),
            None => ck.error(
                pos,
                format!(
                    "read_only_root of {whose} must be true or false, got {}",
                    describe_value(value)
                ),
            ),
        }
    }
    fields
}

impl ContainerFields {
    /// The step's settings laid over the pipeline's: what the step runs with.
    /// `None` without an image; a setting that then applies to nothing is an
    /// error, at the place it was written.
    pub(super) fn resolve(
        self,
        defaults: &ContainerFields,
        ck: &Checker<'_>,
        label: &str,
    ) -> Option<ContainerSpec> {
        fn pick<T: Clone>(own: Option<Set<T>>, default: &Option<Set<T>>) -> Option<Set<T>> {
            own.or_else(|| default.clone())
        }
        let image = pick(self.image, &defaults.image);
        let pull = pick(self.pull, &defaults.pull);
        let shm = pick(self.shm_size_bytes, &defaults.shm_size_bytes);
        let network = pick(self.network, &defaults.network);
        let read_only = pick(self.read_only_root, &defaults.read_only_root);
        let Some(image) = image else {
            let stray = [
                ("image_pull", pull.as_ref().map(|s| s.at)),
                ("shm_size", shm.as_ref().map(|s| s.at)),
                ("network", network.as_ref().map(|s| s.at)),
                ("read_only_root", read_only.as_ref().map(|s| s.at)),
            ];
            for (key, at) in stray {
                if let Some(at) = at {
                    ck.error(
                        at,
                        format!(
                            "{key} applies to a step that runs in a container, and step \
                             {label} has no `image` (set one on the step or at the top of \
                             the pipeline)"
                        ),
                    );
                }
            }
            return None;
        };
        Some(ContainerSpec {
            image: image.value,
            pull: pull.map_or(ImagePull::IfNotPresent, |s| s.value),
            shm_size_bytes: shm.map(|s| s.value),
            network: network.map_or(Network::Bridge, |s| s.value),
            read_only_root: read_only.is_some_and(|s| s.value),
        })
    }
}

/// What is wrong with an image reference, if anything: Docker's grammar,
/// `[host[:port]/]path[:tag][@algorithm:digest]`, with lower-case path
/// components.
pub(super) fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("is empty".to_string());
    }
    if image.len() > MAX_IMAGE_REF {
        return Some(format!("is longer than {MAX_IMAGE_REF} characters"));
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Some(format!(
                "has an invalid digest {digest:?} (expected e.g. sha256: and 64 hex digits)"
            ));
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Some(format!(
                "has an invalid tag {tag:?} (letters, digits, '_', '.', '-'; at most 128)"
            ));
        }
    }
    let mut components: Vec<&str> = path.split('/').collect();
    // The first component is a registry host when it looks like one.
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let host_ok = first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
            if !host_ok {
                return Some(format!("has an invalid registry host {first:?}"));
            }
            components.remove(0);
        }
    }
    for component in components {
        let valid = !component.is_empty()
            && component.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && component.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !valid {
            return Some(format!(
                "has an invalid name component {component:?} (lower-case letters, digits, \
                 and '.', '_', '-' between them)"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::image_problem;

    #[test]
    fn image_references_follow_dockers_grammar() {
        for good in [
            "python",
            "python:3.11-slim",
            "library/python:3.11",
            "ferry/sklearn:2026.12",
            "localhost:5000/team/train:v1",
            "registry.example.com/team/train@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.example.com:443/a/b/c:latest",
        ] {
            assert_eq!(image_problem(good), None, "{good}");
        }
        for (bad, says) in [
            ("", "is empty"),
            ("Python:3", "invalid name component \"Python\""),
            ("python:", "invalid tag \"\""),
            ("python:3.11 slim", "invalid tag"),
            ("team//train", "invalid name component \"\""),
            ("train@sha256:xyz", "invalid digest"),
            ("-train", "invalid name component"),
            ("${params.image}", "invalid name component"),
        ] {
            let problem = image_problem(bad).unwrap_or_default();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }
}
