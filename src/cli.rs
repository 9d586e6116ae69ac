//! The command line: argument parsing, logging set-up, and the exit code of each command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::assets::{AssetPath, DEMO_CONFIG};
use crate::config::Room;
use crate::show::{Mode, ShowReport};
use crate::shutdown::Shutdown;

/// zhubo: a 24/7 digital-human live-streaming host.
///
/// A lip-synced avatar speaks the show script and is streamed to RTMP ingests and recordings.
/// Without --config, the embedded demo show is used.
#[derive(Debug, Parser)]
#[command(name = "zhubo", version, about, long_about)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render the show to a file, as fast as the CPU allows.
    Render {
        /// Room config (TOML). Default: the embedded demo.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds of show to render.
        #[arg(long, value_name = "SECS")]
        duration: f64,
        /// Output file: .mp4, .mkv or .flv.
        #[arg(long, value_name = "FILE")]
        out: String,
    },
    /// Run the show live, paced to real time, until SIGINT or SIGTERM.
    ///
    /// Pushes to every output in the config plus each --output, and records to the config's
    /// recording plus --record. A failed output is rebuilt with backoff while the others go on.
    Live {
        /// Room config (TOML). Default: the embedded demo.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// An RTMP push URL with its stream key (rtmp://host:port/app/key); repeatable.
        #[arg(long, value_name = "URL")]
        output: Vec<String>,
        /// Also record to this file (.mp4, .mkv or .flv; .mkv survives a crash).
        #[arg(long, value_name = "FILE")]
        record: Option<String>,
    },
    /// Measure rendering cost and the whole pipeline's CPU against the bare encoder.
    Bench {
        /// Room config (TOML). Default: the embedded demo.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds of stream for each pipeline measurement.
        #[arg(long, default_value_t = 20.0, value_name = "SECS")]
        seconds: f64,
        /// Frames for the renderer measurement.
        #[arg(long, default_value_t = 600, value_name = "N")]
        frames: u32,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn load_room(config: Option<PathBuf>) -> anyhow::Result<Room> {
    let source = config.map_or_else(|| AssetPath::Embedded(DEMO_CONFIG.into()), AssetPath::Disk);
    Ok(Room::load(source)?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    crate::media::init_gstreamer()?;
    match command {
        Command::Render { config, duration, out } => {
            if !(duration.is_finite() && duration > 0.0) {
                anyhow::bail!("--duration must be a positive number of seconds");
            }
            let room = load_room(config)?;
            let mode = Mode::Render { seconds: duration, out: out.clone() };
            let prepared = crate::show::prepare(room, &mode)?;
            let shutdown = Shutdown::new();
            let signals = shutdown.spawn(cancel_on_signal(shutdown.clone()));
            let report = crate::show::run(prepared, mode, shutdown.clone(), None).await?;
            signals.abort();
            print_report(&report);
            eprintln!("wrote {out}");
            Ok(())
        }
        Command::Live { config, output, record } => {
            let room = load_room(config)?;
            let mode = Mode::Live { extra_outputs: output, extra_record: record };
            let prepared = crate::show::prepare(room, &mode)?;
            let shutdown = Shutdown::new();
            shutdown.spawn(cancel_on_signal(shutdown.clone()));
            let report = crate::show::run(prepared, mode, shutdown.clone(), None).await?;
            if !shutdown.drain(Duration::from_secs(10)).await {
                tracing::warn!("some stages did not stop within 10 s");
            }
            print_report(&report);
            Ok(())
        }
        Command::Bench { config, seconds, frames } => crate::bench::run(load_room(config)?, seconds, frames).await,
    }
}

/// Cancels the show on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: Shutdown) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the show");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    let token = shutdown.token();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the show"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping the show"),
        _ = token.cancelled() => return,
    }
    shutdown.cancel();
}

fn print_report(r: &ShowReport) {
    eprintln!(
        "show: {} frames ({:.2} s) in {:.2} s wall = {:.2}x real time; {} utterances; standby frames {} \
         (late frames discarded {}, render requests dropped {}); silent-frame underruns {}; lines failed {}; max lag {:.1} ms",
        r.frames,
        r.media_seconds,
        r.wall_seconds,
        r.media_seconds / r.wall_seconds.max(1e-9),
        r.utterances,
        r.standby_frames,
        r.late_frames_discarded,
        r.render_requests_dropped,
        r.speech_underruns,
        r.lines_failed,
        r.max_lag_ms
    );
    for o in &r.outputs {
        eprintln!(
            "output {}: starts {}, reconnects {}, failures {}, dropped samples {}, {:.1} MB",
            o.name,
            o.starts,
            o.reconnects,
            o.failures,
            o.dropped_samples,
            o.bytes as f64 / 1e6
        );
    }
}
