//! The room config: one TOML file describing one live room (picture, sound, host, script, outputs).
//!
//! Every table rejects unknown keys, and every problem is reported as `file:line:col` with a hint.
//! Files the config names (script, avatar pack, pipeline graphs) are paths relative to the config
//! file; a key left out means the embedded default. Nothing here can change while a show is live
//! yet: every field is read once at start (hot-swappable settings arrive with the control API).

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::assets::{AssetError, AssetPath};
use crate::diagnostic::{Diagnostics, SourceText};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] AssetError),
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    #[serde(default)]
    pub video: VideoSettings,
    #[serde(default)]
    pub audio: AudioSettings,
    #[serde(default)]
    pub avatar: AvatarSettings,
    #[serde(default)]
    pub voice: VoiceSettings,
    #[serde(default)]
    pub script: ScriptSettings,
    #[serde(default)]
    pub encoder: EncoderSettings,
    #[serde(default)]
    pub outputs: Vec<OutputSettings>,
    pub recording: Option<RecordingSettings>,
    #[serde(default)]
    pub reconnect: ReconnectSettings,
}

/// Picture format of the stream. Defaults follow what RTMP ingests expect for 720p30.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSettings {
    pub width: Spanned<u32>,
    pub height: Spanned<u32>,
    pub fps: Spanned<u32>,
    pub bitrate_kbps: Spanned<u32>,
    /// Seconds between keyframes; ingests want 2 and many refuse more than 4.
    pub keyframe_interval_s: Spanned<u32>,
}

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            width: Spanned::new(0..0, 1280),
            height: Spanned::new(0..0, 720),
            fps: Spanned::new(0..0, 30),
            bitrate_kbps: Spanned::new(0..0, 3000),
            keyframe_interval_s: Spanned::new(0..0, 2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSettings {
    /// The master clock runs in samples at this rate.
    pub sample_rate: Spanned<u32>,
    pub channels: Spanned<u32>,
    pub bitrate_kbps: Spanned<u32>,
}

impl Default for AudioSettings {
    fn default() -> Self {
        Self {
            sample_rate: Spanned::new(0..0, 48_000),
            channels: Spanned::new(0..0, 2),
            bitrate_kbps: Spanned::new(0..0, 128),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvatarSettings {
    /// Directory of an avatar pack (holding `avatar.toml`); the embedded default pack if absent.
    pub pack: Option<Spanned<String>>,
    /// Seed for blinks and idle motion, so renders are reproducible.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    7
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceSettings {
    /// Only `espeak-ng` exists so far.
    pub backend: Spanned<String>,
    /// An espeak-ng voice name, optionally with a variant (`en-us+f3`).
    pub name: Spanned<String>,
    /// Speaking rate in words per minute.
    pub rate_wpm: Spanned<u32>,
    /// 0–100, 50 is the voice's normal pitch.
    pub pitch: Spanned<u32>,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self {
            backend: Spanned::new(0..0, "espeak-ng".into()),
            name: Spanned::new(0..0, "en-us+f3".into()),
            rate_wpm: Spanned::new(0..0, 160),
            pitch: Spanned::new(0..0, 55),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptSettings {
    /// The show script; the embedded demo script if absent.
    pub path: Option<Spanned<String>>,
    /// Silence between two lines of a segment.
    pub line_gap_ms: u32,
    /// Silence between two segments.
    pub segment_gap_ms: u32,
}

impl Default for ScriptSettings {
    fn default() -> Self {
        Self { path: None, line_gap_ms: 350, segment_gap_ms: 900 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderSettings {
    /// Encoder graph (gst-launch text with placeholders); the embedded x264 graph if absent.
    pub pipeline: Option<Spanned<String>>,
    /// x264 speed preset, passed to the graph as `{preset}`.
    pub preset: String,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self { pipeline: None, preset: "veryfast".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSettings {
    /// Name used in logs and metrics; derived from the URL's host if absent.
    pub name: Option<String>,
    /// `rtmp://host[:port]/app/stream-key` (or `rtmps://`). The key is masked in every log line.
    pub url: Spanned<String>,
    /// Output graph; the embedded RTMP graph if absent.
    pub pipeline: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    /// `.mp4`, `.mkv` or `.flv`, relative to the working directory; `.mkv` survives a crash,
    /// `.mp4` needs a clean stop to be playable.
    pub path: Spanned<String>,
    /// Recording graph; chosen by the file extension if absent.
    pub pipeline: Option<Spanned<String>>,
}

/// How a failed output is rebuilt: exponential backoff with jitter, capped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSettings {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Each wait is scaled by a random factor in [1 - jitter, 1 + jitter].
    pub jitter: f64,
    /// An output that accepts no data for this long is treated as failed and rebuilt.
    pub stall_timeout_ms: u64,
    /// An output that stayed up this long starts its backoff from the beginning after a failure.
    pub stable_after_ms: u64,
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 250,
            max_backoff_ms: 2000,
            jitter: 0.2,
            stall_timeout_ms: 5000,
            stable_after_ms: 10_000,
        }
    }
}

/// A room config plus where it came from, so relative paths inside it can be resolved.
#[derive(Debug, Clone)]
pub struct Room {
    pub config: RoomConfig,
    pub source: AssetPath,
}

impl Room {
    pub fn load(source: AssetPath) -> Result<Room, ConfigError> {
        let text = source.read_to_string()?;
        let config = RoomConfig::parse(&source.display(), &text)?;
        Ok(Room { config, source })
    }

    /// A file named in the config, or the embedded default when the key is absent.
    pub fn resolve(&self, value: Option<&Spanned<String>>, default_repo_path: &str) -> AssetPath {
        match value {
            Some(v) => self.source.sibling(v.get_ref()),
            None => AssetPath::Embedded(default_repo_path.to_string()),
        }
    }
}

impl RoomConfig {
    pub fn parse(path: &str, text: &str) -> Result<RoomConfig, Diagnostics> {
        let src = SourceText::new(path, text);
        let config: RoomConfig = src.parse_toml()?;
        let mut errors = Vec::new();
        let mut check = |ok: bool, span: Range<usize>, message: String, hint: &str| {
            if !ok {
                let span = (span != (0..0)).then_some(span);
                errors.push(src.error(span, message, Some(hint.to_string())));
            }
        };
        let v = &config.video;
        for (name, value) in [("width", &v.width), ("height", &v.height)] {
            let x = *value.get_ref();
            check(
                (64..=3840).contains(&x) && x % 2 == 0,
                value.span(),
                format!("video {name} {x} is not an even number between 64 and 3840"),
                "ingests take 1280x720 (landscape) or 720x1280 (portrait)",
            );
        }
        check(
            (1..=60).contains(v.fps.get_ref()),
            v.fps.span(),
            format!("video fps {} is outside 1–60", v.fps.get_ref()),
            "30 is what platform ingests expect",
        );
        check(
            (100..=50_000).contains(v.bitrate_kbps.get_ref()),
            v.bitrate_kbps.span(),
            format!("video bitrate {} kbit/s is outside 100–50000", v.bitrate_kbps.get_ref()),
            "720p30 streams use 2500–4500",
        );
        check(
            (1..=10).contains(v.keyframe_interval_s.get_ref()),
            v.keyframe_interval_s.span(),
            format!("keyframe interval {} s is outside 1–10", v.keyframe_interval_s.get_ref()),
            "ingests expect 2 s; many refuse more than 4 s",
        );
        let a = &config.audio;
        check(
            [44_100, 48_000].contains(a.sample_rate.get_ref()),
            a.sample_rate.span(),
            format!("audio sample rate {} is not 44100 or 48000", a.sample_rate.get_ref()),
            "AAC ingests take 44100 or 48000",
        );
        check(
            [1, 2].contains(a.channels.get_ref()),
            a.channels.span(),
            format!("audio channels {} is not 1 or 2", a.channels.get_ref()),
            "use 2 (stereo) for ingests",
        );
        check(
            (32..=512).contains(a.bitrate_kbps.get_ref()),
            a.bitrate_kbps.span(),
            format!("audio bitrate {} kbit/s is outside 32–512", a.bitrate_kbps.get_ref()),
            "128 is the usual ingest setting",
        );
        check(
            config.voice.backend.get_ref() == "espeak-ng",
            config.voice.backend.span(),
            format!("unknown voice backend `{}`", config.voice.backend.get_ref()),
            "the available backend is \"espeak-ng\"",
        );
        check(
            (80..=450).contains(config.voice.rate_wpm.get_ref()),
            config.voice.rate_wpm.span(),
            format!("speaking rate {} wpm is outside 80–450", config.voice.rate_wpm.get_ref()),
            "150–175 sounds natural for a host",
        );
        check(
            *config.voice.pitch.get_ref() <= 100,
            config.voice.pitch.span(),
            format!("pitch {} is above 100", config.voice.pitch.get_ref()),
            "pitch runs 0–100, 50 is normal",
        );
        for out in &config.outputs {
            let url = out.url.get_ref();
            check(
                url.starts_with("rtmp://") || url.starts_with("rtmps://"),
                out.url.span(),
                format!("output url `{}` is not an rtmp:// or rtmps:// URL", crate::output::mask_url(url)),
                "paste the platform's push URL followed by /<stream key>",
            );
        }
        if let Some(rec) = &config.recording {
            let path = rec.path.get_ref();
            check(
                rec.pipeline.is_some() || recording_pipeline_for(path).is_some(),
                rec.path.span(),
                format!("recording `{path}` has no .mp4, .mkv or .flv extension"),
                "name the file with one of those extensions, or set `pipeline`",
            );
        }
        let r = &config.reconnect;
        let mut check_plain = |ok: bool, message: &str| {
            if !ok {
                errors.push(src.error(None, message.to_string(), Some("see the [reconnect] table".into())));
            }
        };
        check_plain(r.initial_backoff_ms >= 10, "reconnect initial_backoff_ms must be at least 10");
        check_plain(r.max_backoff_ms >= r.initial_backoff_ms, "reconnect max_backoff_ms is below initial_backoff_ms");
        check_plain((0.0..1.0).contains(&r.jitter), "reconnect jitter must be in [0, 1)");
        check_plain(r.stall_timeout_ms >= 1000, "reconnect stall_timeout_ms must be at least 1000");
        if errors.is_empty() { Ok(config) } else { Err(Diagnostics(errors)) }
    }
}

/// The embedded recording graph for a file name, chosen by its extension.
pub fn recording_pipeline_for(path: &str) -> Option<&'static str> {
    let ext = std::path::Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" | "mov" => Some("pipelines/record-mp4.pipeline"),
        "mkv" => Some("pipelines/record-mkv.pipeline"),
        "flv" => Some("pipelines/record-flv.pipeline"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_ingest_defaults() {
        let c = RoomConfig::parse("r.toml", "").unwrap();
        assert_eq!((*c.video.width.get_ref(), *c.video.height.get_ref(), *c.video.fps.get_ref()), (1280, 720, 30));
        assert_eq!(*c.audio.sample_rate.get_ref(), 48_000);
        assert!(c.outputs.is_empty() && c.recording.is_none());
    }

    #[test]
    fn every_semantic_error_is_located() {
        let text = "[video]\nwidth = 1281\nfps = 0\n\n[[outputs]]\nurl = \"http://x/app/secretkey\"\n";
        let err = RoomConfig::parse("r.toml", text).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.0.len(), 3, "{shown}");
        assert!(shown.contains("r.toml:2:9: error: video width 1281"), "{shown}");
        assert!(shown.contains("r.toml:3:7: error: video fps 0"), "{shown}");
        assert!(shown.contains("r.toml:6:7: error: output url"), "{shown}");
        assert!(!shown.contains("secretkey"), "stream key leaked: {shown}");
    }

    #[test]
    fn unknown_keys_in_nested_tables_are_rejected() {
        let err = RoomConfig::parse("r.toml", "[audio]\nsample_rate = 48000\nloudness = 3\n").unwrap_err();
        assert!(err.to_string().starts_with("r.toml:3:1: error: unknown field `loudness`"), "{err}");
    }

    #[test]
    fn recording_graph_follows_extension() {
        assert_eq!(recording_pipeline_for("a/b.MKV"), Some("pipelines/record-mkv.pipeline"));
        assert_eq!(recording_pipeline_for("show.mp4"), Some("pipelines/record-mp4.pipeline"));
        assert_eq!(recording_pipeline_for("show.avi"), None);
    }
}
