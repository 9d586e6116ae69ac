//! End-to-end tests: the real binary, a real nginx-rtmp ingest, real ffprobe/ffmpeg, real espeak-ng.

mod harness;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::*;

/// `zhubo render` of the demo: H.264 + AAC at the configured format, 20 s, streams aligned.
#[test]
fn render_of_the_demo_is_a_well_formed_20s_file() {
    let _media = media_lock();
    let dir = Scratch::new("render");
    let out = dir.path("demo.mp4").display().to_string();
    let (status, _, stderr) =
        run_with_timeout(zhubo().args(["render", "--duration", "20", "--out", &out]), Duration::from_secs(300))
            .expect("render finishes within 5 min");
    assert!(status.success(), "{stderr}");
    let s = streams(&out);
    let v = stream(&s, "video");
    let a = stream(&s, "audio");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(1280), Some(720)));
    assert_eq!(v["r_frame_rate"], "30/1");
    assert_eq!(v["pix_fmt"], "yuv420p");
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["sample_rate"], "48000");
    assert_eq!(a["channels"].as_u64(), Some(2));
    let frame = 1.0 / 30.0;
    let v_dur = num(&v["duration"]);
    let a_dur = num(&a["duration"]);
    assert!((v_dur - 20.0).abs() <= frame, "video lasts {v_dur} s");
    assert!((a_dur - 20.0).abs() <= frame, "audio lasts {a_dur} s");
    let (v_start, a_start) = (num(&v["start_time"]), num(&a["start_time"]));
    assert!((v_start - a_start).abs() <= frame, "video starts at {v_start}, audio at {a_start}");
    assert_eq!(v["nb_frames"], "600");
    // The speed figure belongs to `zhubo bench`; here it is only reported.
    let line = stderr.lines().find(|l| l.starts_with("show:")).expect("a show report line");
    println!("{line}");
    assert!(line.contains("standby frames 0"), "{line}");
}

/// `zhubo live` to two real ingests: seen by ffprobe; one ingest is killed and restarted; the same
/// process is back on air there within 5 s; the other ingest and the recording never stop.
#[test]
fn live_stream_survives_an_ingest_restart_and_the_recording_has_no_gap() {
    let _media = media_lock();
    let dir = Scratch::new("live");
    let mut ingest = Ingest::start();
    let steady = Ingest::start();
    let key = "sk_live_4f9c2e";
    let record = dir.path("live.mkv").display().to_string();
    let log_path = dir.path("live.log");
    let mut child = zhubo()
        .args(["live", "--output", &ingest.url(key), "--output", &steady.url(key), "--record", &record])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();

    let first = wait_until(Duration::from_secs(20), || ingest.publishing(key));
    assert!(first.is_some(), "never published: {}", std::fs::read_to_string(&log_path).unwrap());
    let s = streams(&ingest.url(key));
    assert_eq!(stream(&s, "video")["codec_name"], "h264");
    assert_eq!(stream(&s, "audio")["codec_name"], "aac");
    assert_eq!(stream(&s, "video")["width"].as_u64(), Some(1280));

    assert!(wait_until(Duration::from_secs(5), || steady.publishing(key)).is_some());

    ingest.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!ingest.publishing(key));
    assert!(steady.publishing(key), "the other ingest lost the stream");
    ingest.restart();
    let back = wait_until(Duration::from_secs(15), || ingest.publishing(key)).expect("stream came back");
    println!("stream back {:.2} s after the ingest returned", back.as_secs_f64());
    assert!(back <= Duration::from_secs(5), "took {back:?}");
    let s = streams(&ingest.url(key));
    assert_eq!(stream(&s, "video")["codec_name"], "h264");
    assert!(child.try_wait().unwrap().is_none(), "the show process exited");
    std::thread::sleep(Duration::from_secs(2));

    signal(&child, libc::SIGINT);
    let status = wait_with_timeout(&mut child, Duration::from_secs(30)).expect("stops within 30 s of SIGINT");
    let wall = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("output reconnected"), "{log}");
    assert!(!log.contains(key), "the stream key was logged:\n{log}");
    let report = log.lines().find(|l| l.starts_with("output output-1:")).expect("output report");
    assert!(report.contains("reconnects 1"), "{report}");
    let other = log.lines().find(|l| l.starts_with("output output-2:")).expect("output report");
    assert!(other.contains("starts 1, reconnects 0, failures 0, dropped samples 0"), "{other}");

    // The recording: finalised, continuous, as long as the show ran.
    let video = packet_times(&record, "v:0");
    let audio = packet_times(&record, "a:0");
    assert!(max_gap(&video) <= 1.5 / 30.0, "video gap of {} s", max_gap(&video));
    assert!(max_gap(&audio) <= 1.5 * 1024.0 / 48_000.0, "audio gap of {} s", max_gap(&audio));
    assert!(video.windows(2).all(|w| w[1] > w[0]), "video timestamps go backwards");
    let span = video.last().unwrap() - video[0];
    assert!(span > wall - 6.0 && span < wall, "recording spans {span} s of a {wall} s run");
    println!(
        "recording: {} video packets over {span:.2} s, max gaps {:.4}/{:.4} s",
        video.len(),
        max_gap(&video),
        max_gap(&audio)
    );
}

/// An ingest that does not answer at start is retried, not fatal; the recording goes on.
#[test]
fn unreachable_ingest_at_start_is_retried() {
    let _media = media_lock();
    let dir = Scratch::new("unreachable");
    let record = dir.path("rec.flv").display().to_string();
    let url = format!("rtmp://127.0.0.1:{}/live/secret_key_123", free_port());
    let mut child = zhubo()
        .args(["live", "--output", &url, "--record", &record])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "the show stopped because an ingest was down");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.matches("output waiting before reconnect").count() >= 3, "{log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("secret_key_123"), "{log}");
    let video = packet_times(&record, "v:0");
    assert!(video.len() >= 100, "recorded {} frames in 5 s", video.len());
}

/// An ingest that accepts the connection and then never answers (a black hole) is detected
/// (rtmp2sink's socket timeout or zhubo's stall timeout, whichever fires first) and rebuilt,
/// while the show and the recording go on.
#[test]
fn stalled_ingest_is_detected_and_rebuilt() {
    let _media = media_lock();
    let dir = Scratch::new("stalled");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = accepted.clone();
    // Accepts connections and holds them open without reading or writing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(conn);
        }
    });
    let config = dir.write("room.toml", "[reconnect]\nstall_timeout_ms = 2000\n");
    let record = dir.path("rec.mkv").display().to_string();
    let url = format!("rtmp://127.0.0.1:{port}/live/key");
    let mut child = zhubo()
        .args(["live", "--config", config.to_str().unwrap(), "--output", &url, "--record", &record])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rebuilt = wait_until(Duration::from_secs(20), || accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert!(child.try_wait().unwrap().is_none(), "the show stopped");
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(rebuilt.is_some(), "the stalled output was never rebuilt:\n{log}");
    assert!(out.status.success(), "{log}");
    assert!(log.contains("output failed; rebuilding it"), "{log}");
    assert!(log.contains("timed out") || log.contains("no data accepted for"), "{log}");
    let video = packet_times(&record, "v:0");
    assert!(max_gap(&video) <= 1.5 / 30.0, "recording gap {}", max_gap(&video));
}

/// Lip-sync, measured on screen: render a known sentence, decode the video, and find the mouth
/// closed at every bilabial (p, b, m) within one frame of its onset, and open in the middle of
/// every open vowel. (Shifting the mouth track by one frame, 33 ms, either way makes it fail.)
#[test]
fn mouth_on_screen_closes_at_bilabials_within_one_frame() {
    let _media = media_lock();
    let dir = Scratch::new("lipsync");
    let sentence = "Bob may buy my mom a map, maybe.";
    dir.write(
        "show.toml",
        &format!(
            "[show]\ntitle = \"t\"\nlanguage = \"en\"\nhost = \"h\"\n[[segments]]\nname = \"s\"\nlines = [\"{sentence}\"]\n"
        ),
    );
    let config = dir.write(
        "room.toml",
        "[video]\nwidth = 640\nheight = 360\n[voice]\nname = \"en-us\"\nrate_wpm = 150\n[script]\npath = \"show.toml\"\nsegment_gap_ms = 2000\n",
    );
    let out = dir.path("lips.mkv").display().to_string();
    let (status, _, stderr) = run_with_timeout(
        zhubo().args(["render", "--config", config.to_str().unwrap(), "--duration", "4", "--out", &out]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(status.success(), "{stderr}");

    // The true phoneme timing, from the same voice.
    let voice = zhubo::tts::EspeakVoice { name: "en-us".into(), rate_wpm: 150, pitch: 55, output_rate: 48_000 };
    let speech = voice.synthesize(sentence).unwrap();
    let pack = zhubo::assets::AssetPath::Embedded("avatars/default/avatar.toml".into());
    let mut avatar = zhubo::avatar::Avatar::load(&pack, 640, 360, 7).unwrap();
    let rect = avatar.mouth_rect();
    // Mouth opening: how much of the mouth's rectangle shows interior (darker than lips) or teeth
    // (brighter than skin), weighted by how far each pixel is from those, so blends read as partly
    // open rather than flipping at a threshold.
    let opening = |luma: &[u8]| {
        luma.iter().map(|&l| 100u32.saturating_sub(l as u32) + (l as u32).saturating_sub(232)).sum::<u32>()
    };

    // Calibrate on the renderer itself: how open each mouth shape looks, with no encoding.
    use zhubo::lipsync::{MouthPose, Viseme};
    let mut frame = vec![0u8; avatar.frame_len()];
    let mut steady = |v: Viseme| {
        avatar.render_into(&zhubo::avatar::FramePose { time_s: 0.0, mouth: MouthPose::steady(v) }, &mut frame);
        let rows = (rect.1..rect.1 + rect.3).flat_map(|y| (rect.0..rect.0 + rect.2).map(move |x| (x, y)));
        // The frame is limited-range; stretch to full range like ffmpeg's gray output.
        let luma: Vec<u8> = rows
            .map(|(x, y)| ((frame[(y * 640 + x) as usize] as f32 - 16.0) * 255.0 / 219.0).clamp(0.0, 255.0) as u8)
            .collect();
        opening(&luma)
    };
    let [a, b, c, d, e, _f, g, h, x] = Viseme::ALL.map(&mut steady);
    println!("opening of each shape A..H, X: {:?}", [a, b, c, d, e, _f, g, h, x]);
    let shut = a.max(x);
    // Closed means closer to the lips-together shapes than to the teeth-together ones (B, G);
    // open means closer to the open vowels' shapes (C, D, E, H) than to the closed ones.
    assert!(b.min(g) * 2 > shut * 3, "teeth shapes look closed");
    let closed_below = (shut + b.min(g)) / 2;
    let open_above = (shut + c.min(d).min(e).min(h)) / 2;
    let openings: Vec<u32> = luma_frames(&out, rect).iter().map(|f| opening(f)).collect();
    assert_eq!(openings.len(), 120);
    let closed = |n: usize| openings[n] < closed_below;
    let fps = 30.0;
    let secs = |s: u64| s as f64 / 48_000.0;
    // Frames whose time is within one frame period of `t`.
    let near = |t: f64| {
        let f = (t * fps).round() as i64;
        ((f - 1).max(0) as usize)..=((f + 1) as usize).min(openings.len() - 1)
    };
    let (mut bilabials, mut vowels) = (0, 0);
    for (i, p) in speech.phonemes.iter().enumerate() {
        let end = speech.phonemes.get(i + 1).map_or(speech.samples.len() as u64, |q| q.start_sample);
        let (t0, t1) = (secs(p.start_sample), secs(end));
        match Viseme::for_espeak_phoneme(&p.phoneme) {
            Viseme::A => {
                assert!(
                    near(t0).any(closed),
                    "mouth not closed within a frame of /{}/ at {t0:.3} s: openings {:?} (closed below {closed_below})",
                    p.phoneme,
                    &openings[near(t0)]
                );
                let best = near(t0).map(|n| openings[n]).min().unwrap();
                println!("/{}/ at {t0:.3} s: most closed frame nearby {best} (closed below {closed_below})", p.phoneme);
                bilabials += 1;
            }
            Viseme::C | Viseme::D | Viseme::E if t1 - t0 >= 2.0 / fps => {
                let mid = ((t0 + t1) / 2.0 * fps).round() as usize;
                assert!(
                    openings[mid] > open_above,
                    "mouth not open in the middle of /{}/ at {t0:.3}-{t1:.3} s: frames around it {:?} (open above {open_above})",
                    p.phoneme,
                    &openings[mid.saturating_sub(2)..(mid + 3).min(openings.len())]
                );
                vowels += 1;
            }
            _ => {}
        }
    }
    assert!(bilabials >= 8 && vowels >= 4, "{bilabials} bilabials, {vowels} open vowels in {sentence:?}");
    // After the sentence, in the gap, the mouth rests closed.
    let after = ((secs(speech.samples.len() as u64) + 0.2) * fps) as usize;
    assert!(closed(after), "mouth open after speech: {}", openings[after]);
}

/// A renderer that cannot keep up is replaced by the standby picture, frame for frame: the
/// stream neither freezes nor loses frames, and the substitutions are counted.
#[test]
fn late_frames_become_the_standby_picture() {
    let _media = media_lock();
    let dir = Scratch::new("standby");
    let config = dir.write("room.toml", "[video]\nwidth = 320\nheight = 180\nfps = 25\nbitrate_kbps = 500\n");
    let record = dir.path("standby.mkv").display().to_string();

    struct Stalling(Box<dyn zhubo::media::FrameRenderer>, u32);
    impl zhubo::media::FrameRenderer for Stalling {
        fn render(&mut self, pose: &zhubo::avatar::FramePose, out: &mut [u8]) {
            self.1 += 1;
            // Six frames from the 30th (1.2 s) each take 150 ms to draw: the clock cannot wait.
            if (30..36).contains(&self.1) {
                std::thread::sleep(Duration::from_millis(150));
            }
            self.0.render(pose, out)
        }
        fn frame_len(&self) -> usize {
            self.0.frame_len()
        }
        fn standby_frame(&self) -> Vec<u8> {
            self.0.standby_frame()
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(async {
        zhubo::media::init_gstreamer().unwrap();
        let room = zhubo::config::Room::load(zhubo::assets::AssetPath::Disk(config)).unwrap();
        let mode = zhubo::show::Mode::Live { extra_outputs: vec![], extra_record: Some(record.clone()) };
        let prepared = zhubo::show::prepare(room, &mode).unwrap();
        let shutdown = zhubo::shutdown::Shutdown::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            stopper.cancel();
        });
        let hook: zhubo::show::RendererHook = Box::new(|r| Box::new(Stalling(r, 0)));
        zhubo::show::run(prepared, mode, shutdown, Some(hook)).await.unwrap()
    });
    println!("{report:?}");
    assert!(report.standby_frames >= 8, "standby frames: {}", report.standby_frames);
    assert!(report.standby_frames <= 40, "standby frames: {}", report.standby_frames);
    // Every frame period was filled: the recording has one frame per 40 ms, no gap.
    let video = packet_times(&record, "v:0");
    assert_eq!(video.len() as u64, report.frames);
    assert!(max_gap(&video) <= 0.041, "gap {}", max_gap(&video));
    // And the substituted frames show the standby picture (teal), not the studio (beige).
    let frames = luma_frames(&record, (0, 0, 320, 180));
    let mean = |f: &Vec<u8>| f.iter().map(|p| *p as u64).sum::<u64>() / f.len() as u64;
    let means: Vec<u64> = frames.iter().map(mean).collect();
    let studio = means[10];
    let darkest = *means[25..80].iter().min().unwrap();
    assert!(studio > 180 && darkest < 130, "frame brightness: {means:?}");
    // The renderer recovered: the last second is the studio again.
    assert!(means[means.len() - 25..].iter().all(|m| *m > 180), "frame brightness: {means:?}");
}

#[test]
fn bad_config_and_script_fail_with_located_errors() {
    let dir = Scratch::new("bad");
    let config = dir.write("room.toml", "[video]\nwidth = 1280\nframerate = 30\n");
    let (status, _, stderr) = run_with_timeout(
        zhubo().args(["render", "--config", config.to_str().unwrap(), "--duration", "1", "--out", "x.mp4"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("room.toml:3:1: error: unknown field `framerate`"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    dir.write(
        "show.toml",
        "[show]\ntitle = \"t\"\nlanguage = \"en\"\nhost = \"h\"\n[[products]]\nid = \"a\"\nname = \"A\"\nprice = 5\n[[segments]]\nname = \"s\"\nproduct = \"b\"\nlines = [\"{name}\"]\n",
    );
    let config = dir.write("room2.toml", "[script]\npath = \"show.toml\"\n");
    let (status, _, stderr) = run_with_timeout(
        zhubo().args(["live", "--config", config.to_str().unwrap(), "--record", "x.mkv"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("show.toml:11:11: error: segment `s` names unknown product `b`"), "{stderr}");

    let (status, _, stderr) = run_with_timeout(
        zhubo().args(["render", "--config", "/nonexistent/room.toml", "--duration", "1", "--out", "x.mp4"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("cannot read /nonexistent/room.toml"), "{stderr}");

    let bad_toml = dir.write("room3.toml", "[video\nwidth = 3\n");
    let (status, _, stderr) = run_with_timeout(
        zhubo().args(["render", "--config", bad_toml.to_str().unwrap(), "--duration", "1", "--out", "x.mp4"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("room3.toml:1:"), "{stderr}");

    let (status, _, stderr) =
        run_with_timeout(zhubo().args(["render", "--duration", "1", "--out", "x.avi"]), Duration::from_secs(30))
            .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains(".mp4, .mkv or .flv"), "{stderr}");

    let (status, _, stderr) = run_with_timeout(zhubo().args(["live"]), Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("nothing to send the show to"), "{stderr}");
}

#[test]
fn help_describes_every_command() {
    let (status, stdout, _) = run_with_timeout(zhubo().arg("--help"), Duration::from_secs(10)).unwrap();
    assert!(status.success());
    for cmd in ["render", "live", "bench"] {
        assert!(stdout.contains(cmd), "{stdout}");
    }
    let (_, stdout, _) = run_with_timeout(zhubo().args(["live", "--help"]), Duration::from_secs(10)).unwrap();
    for flag in ["--config", "--output", "--record", "SIGINT"] {
        assert!(stdout.contains(flag), "{stdout}");
    }
}
