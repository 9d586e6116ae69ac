//! Where user-editable files come from: the disk, or the copies embedded in the binary.
//!
//! The shipped demo (room config, show script, avatar pack, pipeline graphs) is compiled into the
//! binary so `zhubo render` and `zhubo live` work with no files at hand. A room config names its
//! other files by paths relative to itself; the same relative paths resolve against the embedded
//! tree when the config itself is the embedded one. Invariant: an embedded path is the file's path
//! in the source repository, so the embedded demo and the files on disk are the same text.

use std::path::{Component, Path, PathBuf};

/// Files shipped inside the binary, keyed by their path in the repository.
const EMBEDDED: &[(&str, &str)] = &[
    ("config/demo.toml", include_str!("../config/demo.toml")),
    ("config/demo-show.toml", include_str!("../config/demo-show.toml")),
    ("pipelines/encode-x264.pipeline", include_str!("../pipelines/encode-x264.pipeline")),
    ("pipelines/output-rtmp.pipeline", include_str!("../pipelines/output-rtmp.pipeline")),
    ("pipelines/record-mp4.pipeline", include_str!("../pipelines/record-mp4.pipeline")),
    ("pipelines/record-mkv.pipeline", include_str!("../pipelines/record-mkv.pipeline")),
    ("pipelines/record-flv.pipeline", include_str!("../pipelines/record-flv.pipeline")),
    ("avatars/default/avatar.toml", include_str!("../avatars/default/avatar.toml")),
    ("avatars/default/background.svg", include_str!("../avatars/default/background.svg")),
    ("avatars/default/body.svg", include_str!("../avatars/default/body.svg")),
    ("avatars/default/eyes-half.svg", include_str!("../avatars/default/eyes-half.svg")),
    ("avatars/default/eyes-closed.svg", include_str!("../avatars/default/eyes-closed.svg")),
    ("avatars/default/standby.svg", include_str!("../avatars/default/standby.svg")),
    ("avatars/default/mouth-A.svg", include_str!("../avatars/default/mouth-A.svg")),
    ("avatars/default/mouth-B.svg", include_str!("../avatars/default/mouth-B.svg")),
    ("avatars/default/mouth-C.svg", include_str!("../avatars/default/mouth-C.svg")),
    ("avatars/default/mouth-D.svg", include_str!("../avatars/default/mouth-D.svg")),
    ("avatars/default/mouth-E.svg", include_str!("../avatars/default/mouth-E.svg")),
    ("avatars/default/mouth-F.svg", include_str!("../avatars/default/mouth-F.svg")),
    ("avatars/default/mouth-G.svg", include_str!("../avatars/default/mouth-G.svg")),
    ("avatars/default/mouth-H.svg", include_str!("../avatars/default/mouth-H.svg")),
    ("avatars/default/mouth-X.svg", include_str!("../avatars/default/mouth-X.svg")),
];

/// The embedded demo room config, used when no `--config` is given.
pub const DEMO_CONFIG: &str = "config/demo.toml";

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not part of the embedded demo; give a path to a file on disk")]
    NotEmbedded { path: String },
}

/// A file location: on disk, or a repository path inside the embedded tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetPath {
    Disk(PathBuf),
    Embedded(String),
}

impl AssetPath {
    /// Resolves `relative` against the directory holding `self`.
    pub fn sibling(&self, relative: &str) -> AssetPath {
        match self {
            AssetPath::Disk(p) => {
                let rel = Path::new(relative);
                if rel.is_absolute() {
                    AssetPath::Disk(rel.to_path_buf())
                } else {
                    AssetPath::Disk(p.parent().unwrap_or(Path::new(".")).join(rel))
                }
            }
            AssetPath::Embedded(p) => {
                let dir = Path::new(p).parent().unwrap_or(Path::new(""));
                AssetPath::Embedded(normalize(&dir.join(relative)))
            }
        }
    }

    pub fn read_to_string(&self) -> Result<String, AssetError> {
        match self {
            AssetPath::Disk(p) => {
                std::fs::read_to_string(p).map_err(|source| AssetError::Read { path: p.display().to_string(), source })
            }
            AssetPath::Embedded(p) => EMBEDDED
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| AssetError::NotEmbedded { path: p.clone() }),
        }
    }

    /// The path as shown in messages (embedded files are marked so a user knows not to look on disk).
    pub fn display(&self) -> String {
        match self {
            AssetPath::Disk(p) => p.display().to_string(),
            AssetPath::Embedded(p) => format!("(embedded) {p}"),
        }
    }
}

/// Lexically folds `.` and `..` so embedded keys match (`config/../avatars/x` → `avatars/x`).
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_paths_resolve_like_disk_paths() {
        let cfg = AssetPath::Embedded(DEMO_CONFIG.to_string());
        let avatar = cfg.sibling("../avatars/default/avatar.toml");
        assert_eq!(avatar, AssetPath::Embedded("avatars/default/avatar.toml".into()));
        assert!(avatar.read_to_string().unwrap().contains("[layers]"));
        assert!(matches!(cfg.sibling("nope.toml").read_to_string(), Err(AssetError::NotEmbedded { .. })));
    }
}
