//! A show: the room's stages wired together and run to the end, offline (`render`) or live.
//!
//! Start-up loads and checks everything that can be wrong in a user's files before any media
//! flows (script, voice, avatar, graphs), so bad input fails in the first second with a located
//! error. Then: director thread → clock thread (with its renderer thread) → encoder graph →
//! fan-out → one supervised task per output. The end is the same in both modes: the clock stops
//! (frame limit or cancellation), sends EOS, the encoder drains, every output finalises.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::assets::{AssetError, AssetPath};
use crate::avatar::{Avatar, AvatarError};
use crate::config::{ConfigError, Room, RoomConfig, recording_pipeline_for};
use crate::diagnostic::Diagnostics;
use crate::director::{DirectorStats, ScriptPlayer};
use crate::media::{
    BusEvent, ClockLoop, FrameRenderer, MediaClock, MediaError, MediaStats, Pacing, RawFormat, RawInputs, app_sink,
    app_src, fill_template, forward_bus, parse_pipeline,
};
use crate::output::{Delivery, Fanout, OutputSpec, OutputStats, mask_url, supervise};
use crate::script::ShowScript;
use crate::shutdown::Shutdown;
use crate::tts::{EspeakVoice, TtsError};

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Asset(#[from] AssetError),
    #[error("{0}")]
    Script(Diagnostics),
    #[error("avatar: {0}")]
    Avatar(#[from] AvatarError),
    #[error("voice: {0}")]
    Voice(#[from] TtsError),
    #[error("{0}")]
    Media(#[from] MediaError),
    #[error("{0}: unknown file type; name the file .mp4, .mkv or .flv")]
    UnknownFileType(String),
    #[error("a render of {0} s holds no video frame")]
    TooShort(f64),
    #[error("nothing to send the show to: add [[outputs]] or [recording] to the config, or --output/--record")]
    NoOutputs,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// Render this many seconds to a file as fast as possible.
    Render { seconds: f64, out: String },
    /// Run in real time until cancelled.
    Live { extra_outputs: Vec<String>, extra_record: Option<String> },
}

/// Figures about a finished show.
#[derive(Debug, Clone)]
pub struct ShowReport {
    pub frames: u64,
    pub media_seconds: f64,
    pub wall_seconds: f64,
    pub standby_frames: u64,
    /// Rendered frames that came too late for their slot.
    pub late_frames_discarded: u64,
    /// Frames never rendered because the renderer's queue was full.
    pub render_requests_dropped: u64,
    pub speech_underruns: u64,
    pub utterances: u64,
    pub lines_failed: u64,
    pub max_lag_ms: f64,
    pub outputs: Vec<OutputReport>,
}

#[derive(Debug, Clone)]
pub struct OutputReport {
    pub name: String,
    pub starts: u64,
    pub reconnects: u64,
    pub failures: u64,
    pub dropped_samples: u64,
    pub bytes: u64,
}

/// Everything a show needs, loaded and checked.
pub struct Prepared {
    pub room: Room,
    pub script: ShowScript,
    pub voice: EspeakVoice,
    pub avatar: Avatar,
    pub format: RawFormat,
    encoder_graph: (String, String),
    outputs: Vec<OutputSpec>,
}

/// Loads and checks the room's files. No media flows yet.
pub fn prepare(room: Room, mode: &Mode) -> Result<Prepared, ShowError> {
    let c = &room.config;
    let script_path = room.resolve(c.script.path.as_ref(), "config/demo-show.toml");
    let script_text = script_path.read_to_string()?;
    let script = ShowScript::parse(&script_path.display(), &script_text).map_err(ShowError::Script)?;
    let format = RawFormat {
        width: *c.video.width.get_ref(),
        height: *c.video.height.get_ref(),
        clock: MediaClock { sample_rate: *c.audio.sample_rate.get_ref(), fps: *c.video.fps.get_ref() },
        channels: *c.audio.channels.get_ref(),
    };
    let voice = EspeakVoice {
        name: c.voice.name.get_ref().clone(),
        rate_wpm: *c.voice.rate_wpm.get_ref(),
        pitch: *c.voice.pitch.get_ref(),
        output_rate: format.clock.sample_rate,
    };
    voice.check()?;
    let pack = match &c.avatar.pack {
        Some(dir) => room.source.sibling(&format!("{}/avatar.toml", dir.get_ref().trim_end_matches('/'))),
        None => AssetPath::Embedded("avatars/default/avatar.toml".into()),
    };
    let avatar = Avatar::load(&pack, format.width, format.height, c.avatar.seed)?;
    let encoder_path = room.resolve(c.encoder.pipeline.as_ref(), "pipelines/encode-x264.pipeline");
    let encoder_graph = (encoder_path.display(), encoder_path.read_to_string()?);

    let video_bytes_per_s = *c.video.bitrate_kbps.get_ref() as u64 * 1000 / 8;
    let file_output = |name: &str, path: &str, graph: Option<AssetPath>, delivery| -> Result<OutputSpec, ShowError> {
        let graph = match graph {
            Some(g) => g,
            None => AssetPath::Embedded(
                recording_pipeline_for(path).ok_or_else(|| ShowError::UnknownFileType(path.into()))?.into(),
            ),
        };
        Ok(OutputSpec {
            name: name.into(),
            graph_name: graph.display(),
            graph: graph.read_to_string()?,
            location: path.into(),
            delivery,
            max_queue_bytes: 8 * video_bytes_per_s.max(1 << 20),
        })
    };
    let rtmp_output = |name: String, url: &str, graph: Option<AssetPath>| -> Result<OutputSpec, ShowError> {
        let graph = graph.unwrap_or_else(|| AssetPath::Embedded("pipelines/output-rtmp.pipeline".into()));
        Ok(OutputSpec {
            name,
            graph_name: graph.display(),
            graph: graph.read_to_string()?,
            location: url.into(),
            delivery: Delivery::DropUntilKeyframe,
            // About two seconds of stream: past that the ingest is not keeping up.
            max_queue_bytes: 2 * video_bytes_per_s,
        })
    };
    if let Mode::Render { seconds, .. } = mode
        && format.clock.frames_in(*seconds) == 0
    {
        return Err(ShowError::TooShort(*seconds));
    }
    let mut outputs = Vec::new();
    match mode {
        Mode::Render { out, .. } => outputs.push(file_output("render", out, None, Delivery::Block)?),
        Mode::Live { extra_outputs, extra_record } => {
            for (i, o) in c.outputs.iter().enumerate() {
                let name = o.name.clone().unwrap_or_else(|| format!("output-{}", i + 1));
                let graph = o.pipeline.as_ref().map(|p| room.source.sibling(p.get_ref()));
                outputs.push(rtmp_output(name, o.url.get_ref(), graph)?);
            }
            for url in extra_outputs {
                if !(url.starts_with("rtmp://") || url.starts_with("rtmps://")) {
                    return Err(MediaError::Parse {
                        graph: mask_url(url),
                        message: "--output takes an rtmp:// or rtmps:// push URL".into(),
                    }
                    .into());
                }
                outputs.push(rtmp_output(format!("output-{}", outputs.len() + 1), url, None)?);
            }
            if let Some(rec) = &c.recording {
                let graph = rec.pipeline.as_ref().map(|p| room.source.sibling(p.get_ref()));
                // Like --record, a recording path is relative to the working directory.
                outputs.push(file_output("recording", rec.path.get_ref(), graph, Delivery::DropUntilKeyframe)?);
            }
            if let Some(path) = extra_record {
                outputs.push(file_output("record", path, None, Delivery::DropUntilKeyframe)?);
            }
        }
    }
    if outputs.is_empty() {
        return Err(ShowError::NoOutputs);
    }
    Ok(Prepared { room, script, voice, avatar, format, encoder_graph, outputs })
}

/// The values of the encoder graph's placeholders, from the room config.
fn encoder_placeholders(c: &RoomConfig) -> Vec<(&'static str, String)> {
    let fps = *c.video.fps.get_ref();
    vec![
        ("width", c.video.width.get_ref().to_string()),
        ("height", c.video.height.get_ref().to_string()),
        ("fps", fps.to_string()),
        ("bitrate_kbps", c.video.bitrate_kbps.get_ref().to_string()),
        ("keyframe_frames", (fps * c.video.keyframe_interval_s.get_ref()).to_string()),
        ("preset", c.encoder.preset.clone()),
        ("audio_rate", c.audio.sample_rate.get_ref().to_string()),
        ("channels", c.audio.channels.get_ref().to_string()),
        ("audio_bitrate", (*c.audio.bitrate_kbps.get_ref() as u64 * 1000).to_string()),
    ]
}

impl Prepared {
    /// The encoder graph's display name and its text with the placeholders filled in.
    pub fn encoder_description(&self) -> Result<(String, String), MediaError> {
        let (name, text) = &self.encoder_graph;
        Ok((name.clone(), fill_template(name, text, &encoder_placeholders(&self.room.config))?))
    }
}

/// Extra behaviour for tests and benchmarks: wraps the renderer (e.g. to inject stalls).
pub type RendererHook = Box<dyn FnOnce(Box<dyn FrameRenderer>) -> Box<dyn FrameRenderer> + Send>;

/// Runs a prepared show to its end. In live mode it ends when `shutdown` is cancelled.
pub async fn run(
    prepared: Prepared,
    mode: Mode,
    shutdown: Shutdown,
    hook: Option<RendererHook>,
) -> Result<ShowReport, ShowError> {
    let started = Instant::now();
    let (graph_name, description) = prepared.encoder_description()?;
    let graph_name = &graph_name;
    let Prepared { room, script, voice, avatar, format, outputs, .. } = prepared;
    let c = &room.config;
    let fps = format.clock.fps;
    let encoder = parse_pipeline(graph_name, &description)?;
    let inputs = RawInputs {
        video: app_src(&encoder, graph_name, "video_in")?,
        audio: app_src(&encoder, graph_name, "audio_in")?,
    };
    inputs.configure(&format);
    let fanout = Arc::new(Fanout::default());
    fanout.attach(&app_sink(&encoder, graph_name, "video_out")?, &app_sink(&encoder, graph_name, "audio_out")?);
    let mut encoder_events = forward_bus(&encoder);
    encoder
        .set_state(gst::State::Playing)
        .map_err(|_| MediaError::Encoder(format!("{graph_name}: the encoder graph would not start")))?;

    let mut supervisors = Vec::new();
    let mut output_stats = Vec::new();
    for spec in outputs {
        let stats = Arc::new(OutputStats::default());
        output_stats.push((spec.name.clone(), stats.clone()));
        supervisors.push(shutdown.spawn(supervise(spec, fanout.clone(), c.reconnect.clone(), stats, shutdown.token())));
    }

    let director_stats = Arc::new(DirectorStats::default());
    let player = ScriptPlayer::new(script, c.script.line_gap_ms, c.script.segment_gap_ms);
    let utterances =
        crate::director::spawn(&shutdown, player, voice, director_stats.clone()).map_err(MediaError::Thread)?;

    let media_stats = Arc::new(MediaStats::default());
    let (pacing, frame_limit) = match &mode {
        Mode::Render { seconds, .. } => (Pacing::AsFastAsPossible, Some(format.clock.frames_in(*seconds))),
        Mode::Live { .. } => (Pacing::Realtime, None),
    };
    let clock = ClockLoop { format, inputs, pacing, frame_limit, stats: media_stats.clone(), cancel: shutdown.token() };
    let mut renderer: Box<dyn FrameRenderer> = Box::new(avatar);
    if let Some(hook) = hook {
        renderer = hook(renderer);
    }
    let clock_done =
        shutdown.spawn_thread("clock", move || clock.run(renderer, utterances)).map_err(MediaError::Thread)?;

    // Wait for the clock to finish; an encoder error ends the show early.
    let mut encoder_error = None;
    tokio::pin!(clock_done);
    let clock_result = loop {
        tokio::select! {
            r = &mut clock_done => break r.unwrap_or(Err(MediaError::Encoder("the clock thread panicked".into()))),
            ev = encoder_events.recv() => if let Some(BusEvent::Error(e)) = ev {
                tracing::error!(error = %e, "encoder failed; stopping the show");
                encoder_error = Some(e);
                shutdown.cancel();
            }
        }
    };
    // The clock sent EOS: let the encoder drain, then every output finalise.
    if encoder_error.is_none() {
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            match encoder_events.recv().await {
                Some(BusEvent::Error(e)) => Err(e),
                Some(BusEvent::Eos) | None => Ok(()),
            }
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(e)) => encoder_error = Some(e),
            Err(_) => tracing::warn!("the encoder did not drain within 15 s"),
        }
    }
    for s in supervisors {
        if tokio::time::timeout(Duration::from_secs(15), s).await.is_err() {
            tracing::warn!("an output did not finish within 15 s");
        }
    }
    let _ = encoder.set_state(gst::State::Null);
    shutdown.cancel();
    let frames = clock_result?;
    if let Some(e) = encoder_error {
        return Err(MediaError::Encoder(e).into());
    }
    let get = MediaStats::get;
    Ok(ShowReport {
        frames,
        media_seconds: frames as f64 / fps as f64,
        wall_seconds: started.elapsed().as_secs_f64(),
        standby_frames: get(&media_stats.standby_frames),
        late_frames_discarded: get(&media_stats.stale_frames_discarded),
        render_requests_dropped: get(&media_stats.render_requests_dropped),
        speech_underruns: get(&media_stats.speech_underruns),
        utterances: get(&media_stats.utterances),
        lines_failed: get(&director_stats.lines_failed),
        max_lag_ms: get(&media_stats.max_lag_us) as f64 / 1000.0,
        outputs: output_stats
            .into_iter()
            .map(|(name, s)| OutputReport {
                name,
                starts: get(&s.starts),
                reconnects: get(&s.reconnects),
                failures: get(&s.failures),
                dropped_samples: get(&s.dropped_samples),
                bytes: get(&s.bytes_accepted),
            })
            .collect(),
    })
}
