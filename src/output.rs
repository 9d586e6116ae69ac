//! Outputs: encoded media fanned out to RTMP ingests and recordings, each supervised on its own.
//!
//! The encoder runs once; its appsinks hand every encoded sample to the [`Fanout`], which pushes
//! it into one small pipeline per output (appsrc → mux → sink). An output that fails (ingest
//! down, refused, stalled) is torn down and rebuilt alone with exponential backoff and jitter,
//! while the clock, the encoder and every other output go on.
//!
//! Policies when an output's queue is full ([`Delivery`]):
//! - `Block`: wait (offline renders, where nothing is live and nothing may be lost);
//! - `DropUntilKeyframe`: drop the sample, count it, and resume at the next keyframe so the
//!   decoder downstream never sees a broken GOP (live).
//!
//! Lock order: `Fanout::consumers` before `Consumer::state`; neither is held while pushing into
//! an appsrc (a blocking push must not stall the other stream's thread, or muxers deadlock).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ReconnectSettings;
use crate::media::{BusEvent, MediaError, app_src, fill_template, forward_bus, parse_pipeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Block,
    DropUntilKeyframe,
}

/// What an output is: a name for logs, a graph, and where it goes.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    /// Graph text (gst-launch syntax with `{location}`) and its display name.
    pub graph_name: String,
    pub graph: String,
    /// Push URL or file path. Never logged as is: see [`mask_url`].
    pub location: String,
    pub delivery: Delivery,
    /// Bound of each of the output's two appsrc queues.
    pub max_queue_bytes: u64,
}

/// Hides the stream key (everything after the application path) of a push URL.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    // rtmp://host[:port]/app/key → keep host and app, mask what follows.
    let mut parts = rest.splitn(3, '/');
    let host = parts.next().unwrap_or("");
    let app = parts.next();
    let key = parts.next();
    match (app, key) {
        (Some(app), Some(key)) if !key.is_empty() => format!("{}://{host}/{app}/****", &url[..scheme_end]),
        (Some(app), _) => format!("{}://{host}/{app}", &url[..scheme_end]),
        _ => url.to_string(),
    }
}

/// Output state, as seen by status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutputState {
    Starting = 0,
    Live = 1,
    Backoff = 2,
    Finished = 3,
    Failed = 4,
}

#[derive(Debug, Default)]
pub struct OutputStats {
    state: AtomicU8,
    /// Pipelines started (first start included).
    pub starts: AtomicU64,
    /// Times the output came back up (ran for a second without error) after a failure.
    pub reconnects: AtomicU64,
    pub failures: AtomicU64,
    pub dropped_samples: AtomicU64,
    pub bytes_accepted: AtomicU64,
}

impl OutputStats {
    pub fn state(&self) -> OutputState {
        match self.state.load(Ordering::Relaxed) {
            1 => OutputState::Live,
            2 => OutputState::Backoff,
            3 => OutputState::Finished,
            4 => OutputState::Failed,
            _ => OutputState::Starting,
        }
    }
    fn set_state(&self, s: OutputState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct ConsumerState {
    /// PTS of the first keyframe this output received: its timestamps start from there.
    offset: Option<gst::ClockTime>,
    waiting_keyframe: bool,
    video_caps_set: bool,
    audio_caps_set: bool,
}

/// One output's entry in the fan-out.
struct Consumer {
    id: u64,
    video: gst_app::AppSrc,
    audio: gst_app::AppSrc,
    delivery: Delivery,
    max_queue_bytes: u64,
    state: Mutex<ConsumerState>,
    /// Milliseconds since `Fanout::epoch` of the last accepted sample (stall detection).
    last_accepted_ms: AtomicU64,
    stats: Arc<OutputStats>,
}

#[derive(Clone, Copy)]
enum Track {
    Video,
    Audio,
}

/// Distributes the encoder's samples to every live output.
pub struct Fanout {
    consumers: Mutex<Vec<Arc<Consumer>>>,
    ended: AtomicBool,
    epoch: Instant,
    next_id: AtomicU64,
}

impl Default for Fanout {
    fn default() -> Self {
        Self {
            consumers: Mutex::new(Vec::new()),
            ended: AtomicBool::new(false),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Fanout {
    /// Wires the encoder's appsinks to this fan-out.
    pub fn attach(self: &Arc<Self>, video: &gst_app::AppSink, audio: &gst_app::AppSink) {
        for (sink, track) in [(video, Track::Video), (audio, Track::Audio)] {
            let on_sample = self.clone();
            let on_eos = self.clone();
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        on_sample.distribute(&sample, track);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .eos(move |_| on_eos.track_ended(track))
                    .build(),
            );
        }
    }

    fn snapshot(&self) -> Vec<Arc<Consumer>> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, c: Arc<Consumer>) {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    fn remove(&self, id: u64) {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.id != id);
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn track_ended(&self, track: Track) {
        // Each track's EOS is forwarded to that track's appsrc; the muxer finishes when both did.
        if matches!(track, Track::Video) {
            self.ended.store(true, Ordering::Release);
        }
        for c in self.snapshot() {
            let _ = match track {
                Track::Video => c.video.end_of_stream(),
                Track::Audio => c.audio.end_of_stream(),
            };
        }
    }

    fn distribute(&self, sample: &gst::Sample, track: Track) {
        let Some(buffer) = sample.buffer() else { return };
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        for c in self.snapshot() {
            c.offer(sample, buffer, track, now_ms);
        }
    }
}

impl Consumer {
    fn offer(&self, sample: &gst::Sample, buffer: &gst::BufferRef, track: Track, now_ms: u64) {
        let src = match track {
            Track::Video => &self.video,
            Track::Audio => &self.audio,
        };
        // Encoders shift timestamps (x264enc by 1000 h, to keep DTS positive); the segment maps
        // them back. Running time is the show's own timeline.
        let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>());
        let running = |t: Option<gst::ClockTime>| match (t, segment) {
            (Some(t), Some(seg)) => seg.to_running_time(t),
            (t, _) => t,
        };
        let Some(pts) = running(buffer.pts()) else { return };
        let (offset, set_caps) = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Track::Video = track {
                let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                if st.offset.is_none() || st.waiting_keyframe {
                    if !keyframe {
                        return;
                    }
                    st.waiting_keyframe = false;
                    st.offset.get_or_insert(pts);
                }
            }
            let Some(offset) = st.offset else { return };
            if pts < offset {
                return;
            }
            if self.delivery == Delivery::DropUntilKeyframe && src.current_level_bytes() >= self.max_queue_bytes {
                self.stats.dropped_samples.fetch_add(1, Ordering::Relaxed);
                st.waiting_keyframe = true;
                return;
            }
            let flag = match track {
                Track::Video => &mut st.video_caps_set,
                Track::Audio => &mut st.audio_caps_set,
            };
            let set_caps = !*flag;
            *flag = true;
            (offset, set_caps)
        };
        if set_caps {
            src.set_caps(sample.caps_owned().as_ref());
        }
        let mut out = buffer.copy();
        {
            let b = out.make_mut();
            b.set_pts(pts - offset);
            if let Some(dts) = running(buffer.dts()) {
                b.set_dts(dts.checked_sub(offset).unwrap_or(gst::ClockTime::ZERO));
            }
        }
        let size = out.size() as u64;
        if src.push_buffer(out).is_ok() {
            self.stats.bytes_accepted.fetch_add(size, Ordering::Relaxed);
            self.last_accepted_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

/// Exponential backoff with jitter, capped; restarts from the beginning after a stable run.
#[derive(Debug, Clone)]
pub struct Backoff {
    settings: ReconnectSettings,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(settings: ReconnectSettings) -> Self {
        Self { settings, attempt: 0, rng: fastrand::Rng::new() }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = (self.settings.initial_backoff_ms as f64 * 2f64.powi(self.attempt.min(30) as i32))
            .min(self.settings.max_backoff_ms as f64);
        self.attempt += 1;
        let jitter = self.settings.jitter * (2.0 * self.rng.f64() - 1.0);
        Duration::from_millis((base * (1.0 + jitter)).max(1.0) as u64)
    }
}

/// A running output pipeline and the messages its bus reports.
struct RunningOutput {
    pipeline: gst::Pipeline,
    consumer: Arc<Consumer>,
    bus_events: mpsc::Receiver<BusEvent>,
}

fn start_output(spec: &OutputSpec, fanout: &Fanout, stats: &Arc<OutputStats>) -> Result<RunningOutput, MediaError> {
    let text = fill_template(&spec.graph_name, &spec.graph, &[("location", spec.location.clone())])?;
    let pipeline = parse_pipeline(&spec.graph_name, &text)?;
    let video = app_src(&pipeline, &spec.graph_name, "video_in")?;
    let audio = app_src(&pipeline, &spec.graph_name, "audio_in")?;
    for src in [&video, &audio] {
        src.set_format(gst::Format::Time);
        src.set_is_live(false);
        src.set_block(spec.delivery == Delivery::Block);
        src.set_max_bytes(spec.max_queue_bytes);
        src.set_property("max-buffers", 0u64);
        src.set_property("max-time", 0u64);
    }
    let bus_events = forward_bus(&pipeline);
    let consumer = Arc::new(Consumer {
        id: fanout.next_id.fetch_add(1, Ordering::Relaxed),
        video,
        audio,
        delivery: spec.delivery,
        max_queue_bytes: spec.max_queue_bytes,
        state: Mutex::new(ConsumerState::default()),
        last_accepted_ms: AtomicU64::new(fanout.epoch.elapsed().as_millis() as u64),
        stats: stats.clone(),
    });
    pipeline.set_state(gst::State::Playing).map_err(|_| MediaError::Parse {
        graph: spec.graph_name.clone(),
        message: "the output graph would not start".into(),
    })?;
    fanout.add(consumer.clone());
    Ok(RunningOutput { pipeline, consumer, bus_events })
}

fn stop_output(running: RunningOutput, fanout: &Fanout) {
    fanout.remove(running.consumer.id);
    let _ = running.pipeline.set_state(gst::State::Null);
}

/// How a supervised run of an output ended.
enum RunEnd {
    /// The stream ended and the output finalised it.
    Finished,
    Failed(String),
    /// Shut down without a clean EOS in time.
    Abandoned,
}

/// Supervises one output until the stream ends: starts it, watches it, rebuilds it on failure.
pub async fn supervise(
    spec: OutputSpec,
    fanout: Arc<Fanout>,
    settings: ReconnectSettings,
    stats: Arc<OutputStats>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("output", name = %spec.name, to = %mask_url(&spec.location));
    supervise_inner(spec, fanout, settings, stats, cancel).instrument(span).await
}

async fn supervise_inner(
    spec: OutputSpec,
    fanout: Arc<Fanout>,
    settings: ReconnectSettings,
    stats: Arc<OutputStats>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.clone());
    // When the output went down, if it is down: a reconnect is counted when it is back up.
    let mut down_since: Option<Instant> = None;
    loop {
        if fanout.has_ended() || cancel.is_cancelled() && down_since.is_some() {
            stats.set_state(OutputState::Finished);
            return;
        }
        stats.set_state(OutputState::Starting);
        let running = match start_output(&spec, &fanout, &stats) {
            Ok(r) => r,
            Err(
                e @ (MediaError::Parse { .. }
                | MediaError::UnknownPlaceholder { .. }
                | MediaError::MissingElement { .. }),
            ) if down_since.is_none() => {
                // A graph that does not build will not build next time either: permanent.
                tracing::error!(error = %e, "output disabled: its graph is invalid");
                stats.set_state(OutputState::Failed);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "output failed to start");
                stats.failures.fetch_add(1, Ordering::Relaxed);
                down_since.get_or_insert_with(Instant::now);
                if wait_backoff(&mut backoff, &stats, &cancel).await {
                    continue;
                }
                stats.set_state(OutputState::Finished);
                return;
            }
        };
        stats.starts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (end, running) = watch(running, &fanout, &settings, &cancel, &stats, &mut down_since).await;
        stop_output(running, &fanout);
        match end {
            RunEnd::Finished => {
                tracing::info!("output finished");
                stats.set_state(OutputState::Finished);
                return;
            }
            RunEnd::Abandoned => {
                tracing::warn!("output stopped before its stream was finalised");
                stats.set_state(OutputState::Finished);
                return;
            }
            RunEnd::Failed(why) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                down_since.get_or_insert_with(Instant::now);
                if started.elapsed() >= Duration::from_millis(settings.stable_after_ms) {
                    backoff.reset();
                }
                tracing::warn!(error = %why, "output failed; rebuilding it");
                if !wait_backoff(&mut backoff, &stats, &cancel).await {
                    stats.set_state(OutputState::Finished);
                    return;
                }
            }
        }
    }
}

/// Sleeps for the next backoff delay; false if the show is shutting down meanwhile.
async fn wait_backoff(backoff: &mut Backoff, stats: &OutputStats, cancel: &CancellationToken) -> bool {
    stats.set_state(OutputState::Backoff);
    let delay = backoff.next_delay();
    tracing::info!(retry_in_ms = delay.as_millis() as u64, "output waiting before reconnect");
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = cancel.cancelled() => false,
    }
}

/// How long an output may take to finalise after the show stops.
const FINALISE_TIMEOUT: Duration = Duration::from_secs(10);

/// An output that has run this long without an error, accepting data, counts as up.
const CONFIRM_UP: Duration = Duration::from_secs(1);

async fn watch(
    mut running: RunningOutput,
    fanout: &Fanout,
    settings: &ReconnectSettings,
    cancel: &CancellationToken,
    stats: &OutputStats,
    down_since: &mut Option<Instant>,
) -> (RunEnd, RunningOutput) {
    let stall = settings.stall_timeout_ms;
    let started = Instant::now();
    let mut confirmed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut finalise_by: Option<Instant> = None;
    loop {
        tokio::select! {
            ev = running.bus_events.recv() => match ev {
                Some(BusEvent::Eos) => return (RunEnd::Finished, running),
                Some(BusEvent::Error(e)) => {
                    if fanout.has_ended() {
                        return (RunEnd::Abandoned, running);
                    }
                    return (RunEnd::Failed(e), running);
                }
                None => return (RunEnd::Failed("bus closed".into()), running),
            },
            _ = tick.tick() => {
                if fanout.has_ended() || cancel.is_cancelled() {
                    let by = *finalise_by.get_or_insert_with(|| Instant::now() + FINALISE_TIMEOUT);
                    if Instant::now() >= by {
                        return (RunEnd::Abandoned, running);
                    }
                    continue;
                }
                let now_ms = fanout.epoch.elapsed().as_millis() as u64;
                let idle = now_ms.saturating_sub(running.consumer.last_accepted_ms.load(Ordering::Relaxed));
                if idle > stall {
                    return (RunEnd::Failed(format!("no data accepted for {idle} ms")), running);
                }
                if !confirmed && started.elapsed() >= CONFIRM_UP && idle < CONFIRM_UP.as_millis() as u64 {
                    confirmed = true;
                    stats.set_state(OutputState::Live);
                    match down_since.take() {
                        Some(since) => {
                            let n = stats.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::info!(reconnects = n, down_ms = since.elapsed().as_millis() as u64, "output reconnected");
                        }
                        None => tracing::info!("output live"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_are_masked() {
        assert_eq!(mask_url("rtmp://live.example.com/app/sk_123"), "rtmp://live.example.com/app/****");
        assert_eq!(mask_url("rtmps://h:443/live2/a/b?x=1"), "rtmps://h:443/live2/****");
        assert_eq!(mask_url("rtmp://h/app"), "rtmp://h/app");
        assert_eq!(mask_url("/tmp/rec.mkv"), "/tmp/rec.mkv");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let settings =
            ReconnectSettings { initial_backoff_ms: 100, max_backoff_ms: 1000, jitter: 0.2, ..Default::default() };
        let mut b = Backoff::new(settings);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        for (d, base) in delays.iter().zip([100, 200, 400, 800, 1000, 1000, 1000, 1000]) {
            assert!((base * 8 / 10..=base * 12 / 10).contains(d), "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
