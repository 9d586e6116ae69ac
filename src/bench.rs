//! `zhubo bench`: what a frame costs, what the whole show costs, and what the encoder alone costs.
//!
//! CPU time is read with `getrusage`, so the figures are CPU seconds, not wall time, and include
//! every thread (x264 and GStreamer threads too). The encoder-alone run feeds `videotestsrc`
//! (a moving ball) and `audiotestsrc` through the room's own encoder graph with the same settings.

use std::time::Instant;

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;

use crate::avatar::{Avatar, FramePose};
use crate::config::Room;
use crate::lipsync::{MouthPose, Viseme};
use crate::show::Mode;
use crate::shutdown::Shutdown;

/// CPU seconds used so far by this thread (`RUSAGE_THREAD`) or the whole process.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub async fn run(room: Room, seconds: f64, frames: u32) -> anyhow::Result<()> {
    let c = &room.config;
    let (w, h, fps) = (*c.video.width.get_ref(), *c.video.height.get_ref(), *c.video.fps.get_ref());
    println!("zhubo bench: {w}x{h}@{fps}, x264 preset {}, {} kbit/s", c.encoder.preset, c.video.bitrate_kbps.get_ref());

    let prepared = crate::show::prepare(room.clone(), &Mode::Render { seconds: 1.0, out: "bench.mkv".into() })?;
    let (_, encoder_graph) = prepared.encoder_description()?;

    // 1. The renderer alone, on this thread.
    let render_ms = tokio::task::spawn_blocking({
        let mut avatar: Avatar = prepared.avatar;
        move || -> anyhow::Result<(f64, f64)> {
            let mut out = vec![0u8; avatar.frame_len()];
            let cpu0 = cpu_seconds(libc::RUSAGE_THREAD);
            let wall0 = Instant::now();
            for i in 0..frames {
                let v = Viseme::ALL[(i / 3) as usize % Viseme::ALL.len()];
                let mouth = MouthPose { from: Viseme::X, to: v, mix: (i % 3) as f32 / 2.0 };
                avatar.render_into(&FramePose { time_s: i as f64 / fps as f64, mouth }, &mut out);
            }
            let n = frames.max(1) as f64;
            Ok(((cpu_seconds(libc::RUSAGE_THREAD) - cpu0) * 1000.0 / n, wall0.elapsed().as_secs_f64() * 1000.0 / n))
        }
    })
    .await??;
    println!("render: {:.2} ms CPU per frame ({:.2} ms wall), {frames} frames", render_ms.0, render_ms.1);

    // 2. The whole show, rendered offline.
    let dir = std::env::temp_dir().join(format!("zhubo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating a scratch directory")?;
    let out = dir.join("show.mkv").display().to_string();
    let mode = Mode::Render { seconds, out };
    let prepared = crate::show::prepare(room.clone(), &mode)?;
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let report = crate::show::run(prepared, mode, Shutdown::new(), None).await?;
    let show_cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    let show_per_s = show_cpu / report.media_seconds;
    println!(
        "show: {:.2} CPU s per stream second ({:.1}% of one core at real time); rendered {:.1} s in {:.1} s = {:.2}x real time",
        show_per_s,
        show_per_s * 100.0,
        report.media_seconds,
        report.wall_seconds,
        report.media_seconds / report.wall_seconds
    );

    // 3. The encoder alone, same graph and settings, test sources.
    let (enc_per_s, enc_wall) =
        tokio::task::spawn_blocking(move || encoder_alone(&room, &encoder_graph, seconds)).await??;
    println!(
        "encoder alone: {enc_per_s:.2} CPU s per stream second ({:.1}% of one core); {enc_wall:.1} s wall",
        enc_per_s * 100.0
    );
    println!("overhead: whole show / encoder alone = {:.2}x CPU", show_per_s / enc_per_s);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs the filled encoder graph `graph` with test sources in place of its appsrcs.
fn encoder_alone(room: &Room, graph: &str, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let c = &room.config;
    let (w, h, fps) = (*c.video.width.get_ref(), *c.video.height.get_ref(), *c.video.fps.get_ref());
    let rate = *c.audio.sample_rate.get_ref();
    let frames = (seconds * fps as f64).round() as u64;
    let graph = graph
        .replace(
            "appsrc name=video_in",
            &format!(
                "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1"
            ),
        )
        .replace(
            "appsrc name=audio_in",
            &format!(
                "audiotestsrc num-buffers={} samplesperbuffer=1024 ! audio/x-raw,format=S16LE,rate={rate},channels={}",
                (seconds * rate as f64 / 1024.0).ceil() as u64,
                c.audio.channels.get_ref()
            ),
        );
    let pipeline = crate::media::parse_pipeline("encoder-alone", &graph)?;
    for name in ["video_out", "audio_out"] {
        let sink = crate::media::app_sink(&pipeline, "encoder-alone", name)?;
        // Nobody pulls from these sinks: drop everything, and do not hold EOS for a reader.
        sink.set_drop(true);
        sink.set_max_buffers(1);
        sink.set_wait_on_eos(false);
    }
    let bus = pipeline.bus().context("pipeline bus")?;
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let wall0 = Instant::now();
    pipeline.set_state(gst::State::Playing).context("starting the encoder-alone graph")?;
    let result = match bus.timed_pop_filtered(gst::ClockTime::NONE, &[gst::MessageType::Eos, gst::MessageType::Error]) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(anyhow::anyhow!("encoder-alone graph failed: {}", e.error())),
            _ => Ok(((cpu_seconds(libc::RUSAGE_SELF) - cpu0) / seconds, wall0.elapsed().as_secs_f64())),
        },
        None => Err(anyhow::anyhow!("encoder-alone graph ended without EOS")),
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}
