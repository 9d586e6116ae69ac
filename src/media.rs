//! The one media clock, and the encoder graph it feeds.
//!
//! Audio sample count is the master clock: frame `n` starts at sample `⌊n · rate / fps⌋`, and its
//! PTS is that sample's time. Every tick pushes exactly the samples of one frame period and one
//! picture, so audio and video cannot drift apart however long the show runs. `render` and `live`
//! share this loop; they differ only in [`Pacing`] (live sleeps until each frame is due and gives
//! the renderer a deadline, render runs flat out).
//!
//! Threads and channels (all bounded):
//! - director → clock: utterances (`director` owns that channel; the clock never blocks on it
//!   when live — a missing utterance is silence, counted as an underrun).
//! - clock → renderer: frame requests, [`RENDER_LOOKAHEAD`] + 2 deep; full → request dropped and
//!   counted, and that frame becomes the standby picture.
//! - renderer → clock: rendered frames, same depth; stale frames (past their slot) are discarded
//!   and counted.
//! - clock → encoder: appsrc queues with `block=true` (a bounded few frames): back-pressure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio_util::sync::CancellationToken;

use crate::avatar::FramePose;
use crate::director::Utterance;
use crate::lipsync::{MouthPose, VisemeTrack};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer could not start: {0}")]
    Init(String),
    #[error("{graph}: placeholder {{{name}}} is not known (known: {known})")]
    UnknownPlaceholder { graph: String, name: String, known: String },
    #[error("{graph}: cannot build the graph: {message}")]
    Parse { graph: String, message: String },
    #[error("{graph}: the graph has no {kind} named `{name}`")]
    MissingElement { graph: String, kind: &'static str, name: String },
    #[error("the encoder failed: {0}")]
    Encoder(String),
    #[error("a stage thread could not be started: {0}")]
    Thread(#[from] std::io::Error),
}

/// How the clock relates to the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Push each frame when it is due; a frame the renderer has not finished by then is replaced.
    Realtime,
    /// As fast as the encoder accepts; the renderer gets a generous deadline.
    AsFastAsPossible,
}

/// Frames requested ahead of the one being pushed, so rendering overlaps encoding.
pub const RENDER_LOOKAHEAD: u64 = 3;

/// Converts between frames, samples and nanoseconds for one audio rate and frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaClock {
    pub sample_rate: u32,
    pub fps: u32,
}

impl MediaClock {
    /// First audio sample of frame `n`.
    pub fn frame_start(&self, n: u64) -> u64 {
        n * self.sample_rate as u64 / self.fps as u64
    }

    pub fn samples_to_ns(&self, samples: u64) -> u64 {
        // u128: 24 h at 48 kHz is 4.1e9 samples; × 1e9 overflows u64.
        (samples as u128 * 1_000_000_000 / self.sample_rate as u128) as u64
    }

    pub fn frames_in(&self, secs: f64) -> u64 {
        (secs * self.fps as f64).round() as u64
    }
}

/// Counters of the media clock and its stages; read by reports and (later) metrics.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub frames: AtomicU64,
    pub standby_frames: AtomicU64,
    pub stale_frames_discarded: AtomicU64,
    pub render_requests_dropped: AtomicU64,
    pub speech_underruns: AtomicU64,
    pub utterances: AtomicU64,
    pub audio_samples: AtomicU64,
    /// Largest lag behind the wall clock seen when live, in microseconds.
    pub max_lag_us: AtomicU64,
}

impl MediaStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Substitutes `{name}` placeholders in a graph description and drops `#` comment lines.
pub fn fill_template(graph: &str, text: &str, values: &[(&str, String)]) -> Result<String, MediaError> {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            let value = values.iter().find(|(k, _)| *k == name).map(|(_, v)| v).ok_or_else(|| {
                MediaError::UnknownPlaceholder {
                    graph: graph.to_string(),
                    name: name.to_string(),
                    known: values.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "),
                }
            })?;
            out.push_str(&rest[..open]);
            out.push_str(value);
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

pub fn init_gstreamer() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::Init(e.to_string()))
}

/// Parses a filled graph into a pipeline. `graph` names it in errors (never the filled text,
/// which may hold a stream key).
pub fn parse_pipeline(graph: &str, description: &str) -> Result<gst::Pipeline, MediaError> {
    let element = gst::parse::launch(description)
        .map_err(|e| MediaError::Parse { graph: graph.to_string(), message: e.to_string() })?;
    element
        .downcast::<gst::Pipeline>()
        .map_err(|_| MediaError::Parse { graph: graph.to_string(), message: "not a pipeline".into() })
}

pub fn app_src(pipeline: &gst::Pipeline, graph: &str, name: &str) -> Result<gst_app::AppSrc, MediaError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| MediaError::MissingElement { graph: graph.into(), kind: "appsrc", name: name.into() })
}

pub fn app_sink(pipeline: &gst::Pipeline, graph: &str, name: &str) -> Result<gst_app::AppSink, MediaError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| MediaError::MissingElement { graph: graph.into(), kind: "appsink", name: name.into() })
}

/// What a pipeline's bus reports to the task supervising it.
#[derive(Debug)]
pub enum BusEvent {
    Error(String),
    Eos,
}

/// Forwards a pipeline's errors and EOS to async code. Bus messages arrive on GStreamer threads;
/// the channel is small and full means drop: one error is all a supervisor needs to act on.
pub fn forward_bus(pipeline: &gst::Pipeline) -> tokio::sync::mpsc::Receiver<BusEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let bus = pipeline.bus().expect("a pipeline has a bus");
    bus.set_sync_handler(move |_, msg| {
        let event = match msg.view() {
            gst::MessageView::Error(e) => Some(BusEvent::Error(format!(
                "{} ({})",
                e.error(),
                e.src().map(|s| s.name().to_string()).unwrap_or_default()
            ))),
            gst::MessageView::Eos(_) => Some(BusEvent::Eos),
            _ => None,
        };
        if let Some(ev) = event {
            let _ = tx.try_send(ev);
        }
        gst::BusSyncReply::Drop
    });
    rx
}

/// Raw formats entering the encoder graph.
#[derive(Debug, Clone, Copy)]
pub struct RawFormat {
    pub width: u32,
    pub height: u32,
    pub clock: MediaClock,
    pub channels: u32,
}

impl RawFormat {
    pub fn video_caps(&self) -> gst::Caps {
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", self.width as i32)
            .field("height", self.height as i32)
            .field("framerate", gst::Fraction::new(self.clock.fps as i32, 1))
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .field("interlace-mode", "progressive")
            .field("colorimetry", "bt709")
            .build()
    }

    pub fn audio_caps(&self) -> gst::Caps {
        gst::Caps::builder("audio/x-raw")
            .field("format", "S16LE")
            .field("layout", "interleaved")
            .field("rate", self.clock.sample_rate as i32)
            .field("channels", self.channels as i32)
            .build()
    }
}

/// The appsrcs of the encoder graph: where the clock delivers raw media.
#[derive(Clone)]
pub struct RawInputs {
    pub video: gst_app::AppSrc,
    pub audio: gst_app::AppSrc,
}

impl RawInputs {
    /// Configures the encoder's appsrcs: time format, bounded queues, blocking when full.
    pub fn configure(&self, format: &RawFormat) {
        let frame = crate::avatar::i420_len(format.width, format.height) as u64;
        for (src, caps, max_bytes) in
            [(&self.video, format.video_caps(), frame * 3), (&self.audio, format.audio_caps(), 64 * 1024)]
        {
            src.set_caps(Some(&caps));
            src.set_format(gst::Format::Time);
            src.set_is_live(false);
            src.set_block(true);
            src.set_max_bytes(max_bytes);
            src.set_property("max-buffers", 0u64);
            src.set_property("max-time", 0u64);
        }
    }
}

/// Anything that can draw a frame: the avatar, or a wrapper around it in tests.
pub trait FrameRenderer: Send + 'static {
    fn render(&mut self, pose: &FramePose, out: &mut [u8]);
    fn frame_len(&self) -> usize;
    fn standby_frame(&self) -> Vec<u8>;
}

impl FrameRenderer for crate::avatar::Avatar {
    fn render(&mut self, pose: &FramePose, out: &mut [u8]) {
        self.render_into(pose, out)
    }
    fn frame_len(&self) -> usize {
        crate::avatar::Avatar::frame_len(self)
    }
    fn standby_frame(&self) -> Vec<u8> {
        crate::avatar::Avatar::standby_frame(self).to_vec()
    }
}

struct RenderRequest {
    index: u64,
    pose: FramePose,
}

struct RenderedFrame {
    index: u64,
    data: Vec<u8>,
}

/// The audio timeline: utterances laid end to end with their gaps, on the master clock.
struct Soundtrack {
    current: Option<(Utterance, VisemeTrack, u64)>,
    /// Sample at which the next utterance may start.
    next_start: u64,
    rate: u32,
}

impl Soundtrack {
    /// Mixes samples `[start, start + out.len())` into `out` (mono) and returns the mouth pose at
    /// `start`. Pulls the next utterance from `incoming` when the current one is over.
    fn fill(
        &mut self,
        start: u64,
        out: &mut [i16],
        incoming: &Receiver<Utterance>,
        pacing: Pacing,
        cancel: &CancellationToken,
        stats: &MediaStats,
    ) -> MouthPose {
        out.fill(0);
        let end = start + out.len() as u64;
        let mut pose = MouthPose::REST;
        let mut pos = start;
        while pos < end {
            if let Some((utt, track, at)) = &self.current {
                let utt_end = at + utt.speech.samples.len() as u64;
                if pos < utt_end {
                    if pos == start {
                        pose = track.pose_at(pos - at);
                    }
                    let upto = utt_end.min(end);
                    let src = &utt.speech.samples[(pos - at) as usize..(upto - at) as usize];
                    out[(pos - start) as usize..(upto - start) as usize].copy_from_slice(src);
                    pos = upto;
                    continue;
                }
                self.next_start = utt_end + utt.gap_after_samples(self.rate);
                self.current = None;
            }
            if pos < self.next_start {
                pos = self.next_start.min(end);
                continue;
            }
            match self.next_utterance(incoming, pacing, pos, cancel) {
                Some(utt) => {
                    let track =
                        VisemeTrack::from_phonemes(&utt.speech.phonemes, utt.speech.samples.len() as u64, self.rate);
                    stats.utterances.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(text = %utt.speech.text, at = pos, "utterance starts");
                    self.current = Some((utt, track, pos));
                }
                None => {
                    // Nothing to say yet: this frame stays silent; try again next frame.
                    stats.speech_underruns.fetch_add(1, Ordering::Relaxed);
                    self.next_start = end;
                    pos = end;
                }
            }
        }
        pose
    }

    /// The next utterance, waiting for it only where waiting costs nothing: offline, or live
    /// before the first frame (the wall clock starts with the first frame).
    fn next_utterance(
        &self,
        incoming: &Receiver<Utterance>,
        pacing: Pacing,
        at_sample: u64,
        cancel: &CancellationToken,
    ) -> Option<Utterance> {
        let patience = match pacing {
            Pacing::Realtime if at_sample > 0 => return incoming.try_recv().ok(),
            Pacing::Realtime => Duration::from_secs(2),
            Pacing::AsFastAsPossible => Duration::from_secs(10),
        };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline && !cancel.is_cancelled() {
            match incoming.recv_timeout(Duration::from_millis(100)) {
                Ok(u) => return Some(u),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }
}

/// Everything the clock loop needs.
pub struct ClockLoop {
    pub format: RawFormat,
    pub inputs: RawInputs,
    pub pacing: Pacing,
    /// Stop after this many frames (render); `None` runs until cancelled (live).
    pub frame_limit: Option<u64>,
    pub stats: Arc<MediaStats>,
    pub cancel: CancellationToken,
}

impl ClockLoop {
    /// Runs the show's clock on the calling thread until the frame limit or cancellation, then
    /// sends EOS into the encoder. Spawns the renderer thread itself.
    pub fn run(self, renderer: Box<dyn FrameRenderer>, utterances: Receiver<Utterance>) -> Result<u64, MediaError> {
        let clock = self.format.clock;
        let standby = renderer.standby_frame();
        let (req_tx, req_rx) = sync_channel::<RenderRequest>(RENDER_LOOKAHEAD as usize + 2);
        let (frame_tx, frame_rx) = sync_channel::<RenderedFrame>(RENDER_LOOKAHEAD as usize + 2);
        let render_stats = self.stats.clone();
        let render_thread = std::thread::Builder::new()
            .name("render".into())
            .spawn(move || render_worker(renderer, req_rx, frame_tx, render_stats))?;

        let mut soundtrack = Soundtrack { current: None, next_start: 0, rate: clock.sample_rate };
        let channels = self.format.channels as usize;
        let mut mono: Vec<i16> = Vec::new();
        let frame_period = Duration::from_nanos(clock.samples_to_ns(clock.frame_start(1)));
        // Wall-clock origin of frame 0 (live only), set once the first frame exists so that the
        // renderer's warm-up does not count as lateness.
        let mut started: Option<Instant> = None;
        // Frames are planned (audio + mouth pose) up to RENDER_LOOKAHEAD ahead of the one pushed,
        // so the renderer works ahead; their audio waits here until their turn.
        let mut pending: std::collections::VecDeque<(u64, Vec<i16>)> = std::collections::VecDeque::new();
        let mut next_planned = 0u64;
        // A frame that arrived ahead of its slot (its predecessors' requests were dropped).
        let mut early: Option<RenderedFrame> = None;
        let mut n = 0u64;
        let wall_start = Instant::now();
        let span = tracing::info_span!("clock", fps = clock.fps, rate = clock.sample_rate);
        let _enter = span.enter();
        let result = loop {
            if self.cancel.is_cancelled() || self.frame_limit.is_some_and(|limit| n >= limit) {
                break Ok(n);
            }
            // Plan (audio + pose) and request rendering up to the lookahead.
            while next_planned <= n + RENDER_LOOKAHEAD && self.frame_limit.is_none_or(|l| next_planned < l) {
                let (s0, s1) = (clock.frame_start(next_planned), clock.frame_start(next_planned + 1));
                mono.resize((s1 - s0) as usize, 0);
                let mouth = soundtrack.fill(s0, &mut mono, &utterances, self.pacing, &self.cancel, &self.stats);
                let pose = FramePose { time_s: s0 as f64 / clock.sample_rate as f64, mouth };
                match req_tx.try_send(RenderRequest { index: next_planned, pose }) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        self.stats.render_requests_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                pending.push_back((next_planned, mono.clone()));
                next_planned += 1;
            }
            let (index, audio) = pending.pop_front().expect("frame n was planned");
            debug_assert_eq!(index, n);
            let (s0, s1) = (clock.frame_start(n), clock.frame_start(n + 1));
            let deadline = match (self.pacing, started) {
                (Pacing::Realtime, Some(started)) => {
                    let due = started + Duration::from_nanos(clock.samples_to_ns(s0));
                    let now = Instant::now();
                    if now < due {
                        std::thread::sleep(due - now);
                    } else {
                        let lag = (now - due).as_micros() as u64;
                        self.stats.max_lag_us.fetch_max(lag, Ordering::Relaxed);
                    }
                    due.max(Instant::now()) + frame_period / 2
                }
                (Pacing::Realtime, None) | (Pacing::AsFastAsPossible, _) => Instant::now() + Duration::from_secs(2),
            };
            let picture = wait_for_frame(&frame_rx, n, deadline, &mut early, &self.stats).unwrap_or_else(|| {
                self.stats.standby_frames.fetch_add(1, Ordering::Relaxed);
                standby.clone()
            });
            started.get_or_insert_with(Instant::now);
            let pts = clock.samples_to_ns(s0);
            let duration = clock.samples_to_ns(s1) - pts;
            // Audio first: muxers downstream wait for both streams, and audio is the master.
            let mut interleaved = Vec::with_capacity(audio.len() * channels * 2);
            for s in &audio {
                for _ in 0..channels {
                    interleaved.extend_from_slice(&s.to_le_bytes());
                }
            }
            if let Err(e) = push(&self.inputs.audio, interleaved, pts, duration) {
                break Err(e);
            }
            if let Err(e) = push(&self.inputs.video, picture, pts, duration) {
                break Err(e);
            }
            self.stats.audio_samples.fetch_add(s1 - s0, Ordering::Relaxed);
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            n += 1;
            self.report_progress(n, wall_start);
        };
        drop(req_tx);
        let _ = self.inputs.audio.end_of_stream();
        let _ = self.inputs.video.end_of_stream();
        let _ = render_thread.join();
        result
    }

    /// Logs progress every 10 s of media when rendering, every minute when live.
    fn report_progress(&self, frames: u64, wall_start: Instant) {
        let fps = self.format.clock.fps as u64;
        let every = match self.pacing {
            Pacing::AsFastAsPossible => 10 * fps,
            Pacing::Realtime => 60 * fps,
        };
        if !frames.is_multiple_of(every) {
            return;
        }
        let media_s = frames as f64 / fps as f64;
        let get = MediaStats::get;
        match self.frame_limit {
            Some(limit) => tracing::info!(
                "rendered {media_s:.0} s of {:.0} s ({:.1}x real time)",
                limit as f64 / fps as f64,
                media_s / wall_start.elapsed().as_secs_f64()
            ),
            None => tracing::info!(
                on_air_s = media_s as u64,
                standby_frames = get(&self.stats.standby_frames),
                silent_underruns = get(&self.stats.speech_underruns),
                max_lag_ms = get(&self.stats.max_lag_us) / 1000,
                "on air"
            ),
        }
    }
}

fn push(src: &gst_app::AppSrc, data: Vec<u8>, pts: u64, duration: u64) -> Result<(), MediaError> {
    let mut buffer = gst::Buffer::from_mut_slice(data);
    {
        let b = buffer.get_mut().expect("fresh buffer is writable");
        b.set_pts(gst::ClockTime::from_nseconds(pts));
        b.set_duration(gst::ClockTime::from_nseconds(duration));
    }
    src.push_buffer(buffer).map(|_| ()).map_err(|e| MediaError::Encoder(format!("{} refused data: {e:?}", src.name())))
}

/// Waits for frame `n` until `deadline`. Frames past their slot are discarded (and counted); a
/// frame ahead of its slot means frame `n` will never come, so it is kept in `early` for its turn.
fn wait_for_frame(
    frames: &Receiver<RenderedFrame>,
    n: u64,
    deadline: Instant,
    early: &mut Option<RenderedFrame>,
    stats: &MediaStats,
) -> Option<Vec<u8>> {
    if let Some(f) = early.take() {
        if f.index == n {
            return Some(f.data);
        }
        if f.index > n {
            *early = Some(f);
            return None;
        }
        stats.stale_frames_discarded.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match frames.recv_timeout(left) {
            Ok(f) if f.index == n => return Some(f.data),
            Ok(f) if f.index < n => {
                stats.stale_frames_discarded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(f) => {
                *early = Some(f);
                return None;
            }
            Err(_) => return None,
        }
    }
}

fn render_worker(
    mut renderer: Box<dyn FrameRenderer>,
    requests: Receiver<RenderRequest>,
    frames: SyncSender<RenderedFrame>,
    stats: Arc<MediaStats>,
) {
    let len = renderer.frame_len();
    let _span = tracing::info_span!("render").entered();
    for req in requests {
        let mut data = vec![0u8; len];
        renderer.render(&req.pose, &mut data);
        match frames.try_send(RenderedFrame { index: req.index, data }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.stale_frames_discarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_start_on_exact_samples_forever() {
        let c = MediaClock { sample_rate: 48_000, fps: 30 };
        assert_eq!(c.frame_start(1), 1600);
        // 24 hours in: the frame boundary is still exactly on the audio sample count.
        let day = c.frames_in(86_400.0);
        assert_eq!(c.frame_start(day), 48_000 * 86_400);
        assert_eq!(c.samples_to_ns(c.frame_start(day)), 86_400 * 1_000_000_000);
        // 44.1 kHz at 30 fps is 1470 samples; at 25 fps 1764; at 60 fps 735.
        let c = MediaClock { sample_rate: 44_100, fps: 60 };
        assert_eq!(c.frame_start(60 * 3600) - c.frame_start(60 * 3600 - 1), 735);
    }

    #[test]
    fn uneven_frame_periods_never_accumulate_error() {
        // 48 kHz at 7 fps: periods alternate 6857/6858 samples; over any run they sum exactly.
        let c = MediaClock { sample_rate: 48_000, fps: 7 };
        let total: u64 = (0..7 * 3600).map(|n| c.frame_start(n + 1) - c.frame_start(n)).sum();
        assert_eq!(total, 48_000 * 3600);
    }

    #[test]
    fn templates_fill_and_reject_unknown_placeholders() {
        let text = "# comment {nope}\nx264enc bitrate={bitrate}\n";
        let filled = fill_template("g", text, &[("bitrate", "3000".into())]).unwrap();
        assert_eq!(filled, "x264enc bitrate=3000\n");
        let err = fill_template("g", "enc b={bogus}", &[("bitrate", "1".into())]).unwrap_err();
        assert_eq!(err.to_string(), "g: placeholder {bogus} is not known (known: bitrate)");
    }
}
