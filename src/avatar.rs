//! The avatar: a pack of SVG layers, rasterised once, composed per frame into I420.
//!
//! A pack is `avatar.toml` plus SVG files. The character layers share one canvas (the pack's
//! `[canvas]` size); mouth sprites are small and drawn centred on the `mouth` anchor; the
//! background and standby picture cover the whole frame. Everything is rasterised at load for the
//! configured frame size, so a frame costs a copy, a few alpha blends and a colour conversion.
//! Invariant: rendering is a pure function of (frame time, mouth pose) plus the blink schedule,
//! which only moves forward — frames must be requested in increasing time.

use resvg::tiny_skia::{IntSize, Pixmap, PixmapPaint, Transform};
use resvg::usvg;
use serde::Deserialize;

use crate::assets::{AssetError, AssetPath};
use crate::diagnostic::{Diagnostics, SourceText};
use crate::lipsync::{MouthPose, Viseme};

#[derive(Debug, thiserror::Error)]
pub enum AvatarError {
    #[error(transparent)]
    Read(#[from] AssetError),
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
    #[error("{file}: not a usable SVG: {message}")]
    Svg { file: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackManifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub canvas: CanvasSize,
    pub layers: Layers,
    pub mouths: Mouths,
    pub anchors: Anchors,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub idle: IdleMotion,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasSize {
    pub width: f32,
    pub height: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    /// Full-frame picture behind the host, scaled to cover the frame.
    pub background: String,
    /// The character without its mouth, on the canvas.
    pub body: String,
    /// Overlays on the canvas drawn over the open eyes of `body`.
    pub eyes_half: String,
    pub eyes_closed: String,
    /// Full-frame picture shown when the renderer cannot deliver a frame in time.
    pub standby: String,
}

/// One mouth sprite per viseme (see `lipsync` for the set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct Mouths {
    pub A: String,
    pub B: String,
    pub C: String,
    pub D: String,
    pub E: String,
    pub F: String,
    pub G: String,
    pub H: String,
    pub X: String,
}

impl Mouths {
    fn file(&self, v: Viseme) -> &str {
        match v {
            Viseme::A => &self.A,
            Viseme::B => &self.B,
            Viseme::C => &self.C,
            Viseme::D => &self.D,
            Viseme::E => &self.E,
            Viseme::F => &self.F,
            Viseme::G => &self.G,
            Viseme::H => &self.H,
            Viseme::X => &self.X,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchors {
    /// Centre of the mouth sprites, in canvas units.
    pub mouth: [f32; 2],
}

/// Where the character canvas sits in the frame.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Placement {
    /// Character height as a fraction of the frame height.
    pub height: f32,
    /// Horizontal centre as a fraction of the frame width.
    pub center_x: f32,
}

impl Default for Placement {
    fn default() -> Self {
        Self { height: 0.95, center_x: 0.5 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleMotion {
    /// Side-to-side sway amplitude and period (canvas units, seconds).
    pub sway: f32,
    pub sway_period_s: f32,
    /// Up-and-down breathing amplitude and period.
    pub breath: f32,
    pub breath_period_s: f32,
    /// Blinks come at uniformly random intervals in this range (seconds).
    pub blink_interval_s: [f32; 2],
    /// Chance that a blink is followed at once by a second one.
    pub double_blink_chance: f32,
}

impl Default for IdleMotion {
    fn default() -> Self {
        Self {
            sway: 5.0,
            sway_period_s: 7.3,
            breath: 3.0,
            breath_period_s: 4.1,
            blink_interval_s: [2.0, 6.0],
            double_blink_chance: 0.15,
        }
    }
}

/// Eyelid state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eyes {
    Open,
    Half,
    Closed,
}

/// Natural blinking: random intervals, a 150 ms close-open, sometimes doubled. Moves forward only.
#[derive(Debug, Clone)]
pub struct BlinkSchedule {
    rng: fastrand::Rng,
    interval: [f32; 2],
    double_chance: f32,
    next_start: f64,
}

/// Durations of a blink's phases: half-closing, closed, half-open.
const BLINK_PHASES: [f64; 3] = [0.04, 0.07, 0.04];

impl BlinkSchedule {
    pub fn new(seed: u64, idle: &IdleMotion) -> Self {
        let mut s = Self {
            rng: fastrand::Rng::with_seed(seed),
            interval: idle.blink_interval_s,
            double_chance: idle.double_blink_chance,
            next_start: 0.0,
        };
        s.next_start = s.gap();
        s
    }

    fn gap(&mut self) -> f64 {
        let [lo, hi] = self.interval;
        (lo + self.rng.f32() * (hi - lo).max(0.0)) as f64
    }

    pub fn eyes_at(&mut self, t: f64) -> Eyes {
        let blink_len: f64 = BLINK_PHASES.iter().sum();
        while t >= self.next_start + blink_len {
            let double = self.rng.f32() < self.double_chance;
            self.next_start += blink_len + if double { 0.08 } else { self.gap() };
        }
        let into = t - self.next_start;
        if into < 0.0 {
            Eyes::Open
        } else if (BLINK_PHASES[0]..BLINK_PHASES[0] + BLINK_PHASES[1]).contains(&into) {
            Eyes::Closed
        } else {
            Eyes::Half
        }
    }
}

/// A pack loaded and rasterised for one frame size.
pub struct Avatar {
    pub manifest: PackManifest,
    width: u32,
    height: u32,
    background: Pixmap,
    body: Pixmap,
    eyes_half: Pixmap,
    eyes_closed: Pixmap,
    /// One sprite per viseme (in `Viseme::ALL` order), all the same size.
    mouths: Vec<Pixmap>,
    /// Scratch buffer for crossfades.
    mouth_mix: Pixmap,
    /// Top-left of the canvas in the frame, and canvas units → pixels.
    origin: (f32, f32),
    scale: f32,
    /// Top-left of the mouth sprites relative to the canvas origin, in pixels.
    mouth_offset: (i32, i32),
    standby: Vec<u8>,
    blinks: BlinkSchedule,
    seed: u64,
    canvas: Pixmap,
}

/// What the renderer needs to draw one frame.
#[derive(Debug, Clone, Copy)]
pub struct FramePose {
    pub time_s: f64,
    pub mouth: MouthPose,
}

impl Avatar {
    /// Loads the pack whose `avatar.toml` is at `manifest_path` for frames of `width`×`height`.
    pub fn load(manifest_path: &AssetPath, width: u32, height: u32, seed: u64) -> Result<Avatar, AvatarError> {
        let text = manifest_path.read_to_string()?;
        let display = manifest_path.display();
        let manifest: PackManifest = SourceText::new(&display, &text).parse_toml()?;
        let svg = |file: &str| -> Result<usvg::Tree, AvatarError> {
            let path = manifest_path.sibling(file);
            let data = path.read_to_string()?;
            usvg::Tree::from_str(&data, &usvg::Options::default())
                .map_err(|e| AvatarError::Svg { file: path.display(), message: e.to_string() })
        };
        let scale = height as f32 * manifest.placement.height / manifest.canvas.height;
        let canvas_w = (manifest.canvas.width * scale).ceil() as u32;
        let canvas_h = (manifest.canvas.height * scale).ceil() as u32;
        let origin = (width as f32 * manifest.placement.center_x - canvas_w as f32 / 2.0, (height - canvas_h) as f32);
        let on_canvas = |file: &str| -> Result<Pixmap, AvatarError> {
            let tree = svg(file)?;
            let mut p = new_pixmap(canvas_w, canvas_h);
            let s = tree.size();
            let t = Transform::from_scale(
                manifest.canvas.width / s.width() * scale,
                manifest.canvas.height / s.height() * scale,
            );
            resvg::render(&tree, t, &mut p.as_mut());
            Ok(p)
        };
        let full_frame = |file: &str| -> Result<Pixmap, AvatarError> { Ok(cover(&svg(file)?, width, height)) };

        let mut sprites = Vec::with_capacity(Viseme::ALL.len());
        for v in Viseme::ALL {
            // Mouth sprites are drawn in canvas units, at the character's scale.
            let tree = svg(manifest.mouths.file(v))?;
            let s = tree.size();
            let mut p = new_pixmap((s.width() * scale).ceil() as u32, (s.height() * scale).ceil() as u32);
            resvg::render(&tree, Transform::from_scale(scale, scale), &mut p.as_mut());
            sprites.push(p);
        }
        // Every mouth is centred in one box, so a crossfade is a per-pixel mix of equal buffers.
        let mouth_size = sprites.iter().fold((1, 1), |(w, h), m| (w.max(m.width()), h.max(m.height())));
        let mouths: Vec<Pixmap> = sprites
            .iter()
            .map(|sprite| {
                let mut boxed = new_pixmap(mouth_size.0, mouth_size.1);
                let x = (mouth_size.0 - sprite.width()) as i32 / 2;
                let y = (mouth_size.1 - sprite.height()) as i32 / 2;
                boxed.draw_pixmap(x, y, sprite.as_ref(), &PixmapPaint::default(), Transform::identity(), None);
                boxed
            })
            .collect();
        let [ax, ay] = manifest.anchors.mouth;
        if !(0.0..=manifest.canvas.width).contains(&ax) || !(0.0..=manifest.canvas.height).contains(&ay) {
            return Err(AvatarError::Svg {
                file: display,
                message: format!("mouth anchor ({ax}, {ay}) lies outside the canvas"),
            });
        }
        let mouth_offset =
            ((ax * scale) as i32 - mouth_size.0 as i32 / 2, (ay * scale) as i32 - mouth_size.1 as i32 / 2);
        let standby = to_i420(&full_frame(&manifest.layers.standby)?);
        Ok(Avatar {
            background: full_frame(&manifest.layers.background)?,
            body: on_canvas(&manifest.layers.body)?,
            eyes_half: on_canvas(&manifest.layers.eyes_half)?,
            eyes_closed: on_canvas(&manifest.layers.eyes_closed)?,
            mouth_mix: new_pixmap(mouth_size.0, mouth_size.1),
            mouths,
            origin,
            scale,
            mouth_offset,
            standby,
            blinks: BlinkSchedule::new(seed, &manifest.idle),
            seed,
            canvas: new_pixmap(width, height),
            manifest,
            width,
            height,
        })
    }

    /// The standby picture, already in I420.
    pub fn standby_frame(&self) -> &[u8] {
        &self.standby
    }

    /// The frame rectangle (x, y, w, h) the mouth can cover (any viseme, any idle offset).
    pub fn mouth_rect(&self) -> (u32, u32, u32, u32) {
        let idle = &self.manifest.idle;
        let margin = ((idle.sway.abs() * 1.3 + idle.breath.abs()) * self.scale).ceil() as i32 + 1;
        let (mut x0, mut y0, mut x1, mut y1) = (i32::MAX, i32::MAX, i32::MIN, i32::MIN);
        for (a, b, c, d) in self.mouths.iter().filter_map(opaque_bounds) {
            (x0, y0, x1, y1) = (x0.min(a), y0.min(b), x1.max(c), y1.max(d));
        }
        let x = (self.origin.0 as i32 + self.mouth_offset.0 + x0 - margin).max(0) as u32;
        let y = (self.origin.1 as i32 + self.mouth_offset.1 + y0 - margin).max(0) as u32;
        let w = ((x1 - x0 + 2 * margin) as u32).min(self.width - x);
        let h = ((y1 - y0 + 2 * margin) as u32).min(self.height - y);
        (x, y, w, h)
    }

    /// Idle motion offset (pixels) at time `t`.
    fn idle_offset(&self, t: f64) -> (i32, i32) {
        let idle = &self.manifest.idle;
        let phase = (self.seed % 1000) as f64 / 1000.0;
        let wave = |period: f32, amp: f32, extra: f64| {
            if period <= 0.0 {
                return 0.0;
            }
            (amp as f64 * (std::f64::consts::TAU * (t / period as f64 + phase + extra)).sin()) as f32
        };
        let dx = wave(idle.sway_period_s, idle.sway, 0.0) + wave(idle.sway_period_s * 0.37, idle.sway * 0.3, 0.25);
        let dy = wave(idle.breath_period_s, idle.breath, 0.5);
        ((dx * self.scale).round() as i32, (dy * self.scale).round() as i32)
    }

    /// Draws the frame for `pose` into `out` (I420, `width*height*3/2` bytes).
    pub fn render_into(&mut self, pose: &FramePose, out: &mut [u8]) {
        let (dx, dy) = self.idle_offset(pose.time_s);
        let x = self.origin.0 as i32 + dx;
        let y = self.origin.1 as i32 + dy;
        let eyes = self.blinks.eyes_at(pose.time_s);
        self.canvas.data_mut().copy_from_slice(self.background.data());
        let plain = PixmapPaint::default();
        let id = Transform::identity();
        self.canvas.draw_pixmap(x, y, self.body.as_ref(), &plain, id, None);
        match eyes {
            Eyes::Open => {}
            Eyes::Half => self.canvas.draw_pixmap(x, y, self.eyes_half.as_ref(), &plain, id, None),
            Eyes::Closed => self.canvas.draw_pixmap(x, y, self.eyes_closed.as_ref(), &plain, id, None),
        }
        let (mx, my) = (x + self.mouth_offset.0, y + self.mouth_offset.1);
        let MouthPose { from, to, mix } = pose.mouth;
        let mouth = if from == to || mix >= 0.99 {
            &self.mouths[to.index()]
        } else if mix <= 0.01 {
            &self.mouths[from.index()]
        } else {
            // A true crossfade: each pixel is the mix of both shapes, so where both are opaque
            // nothing of the face shows through halfway.
            let w = (mix * 256.0) as u16;
            let (a, b) = (self.mouths[from.index()].data(), self.mouths[to.index()].data());
            for ((out, a), b) in self.mouth_mix.data_mut().iter_mut().zip(a).zip(b) {
                *out = ((*a as u16 * (256 - w) + *b as u16 * w) >> 8) as u8;
            }
            &self.mouth_mix
        };
        self.canvas.draw_pixmap(mx, my, mouth.as_ref(), &plain, id, None);
        rgba_to_i420(&self.canvas, out);
    }

    pub fn frame_len(&self) -> usize {
        i420_len(self.width, self.height)
    }
}

/// Bounds (x0, y0, x1, y1) of the pixels of `p` that are not fully transparent.
fn opaque_bounds(p: &Pixmap) -> Option<(i32, i32, i32, i32)> {
    let w = p.width() as usize;
    let mut b: Option<(i32, i32, i32, i32)> = None;
    for (i, px) in p.data().chunks_exact(4).enumerate() {
        if px[3] > 0 {
            let (x, y) = ((i % w) as i32, (i / w) as i32);
            b = Some(match b {
                None => (x, y, x + 1, y + 1),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
            });
        }
    }
    b
}

pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
}

fn new_pixmap(w: u32, h: u32) -> Pixmap {
    Pixmap::from_vec(
        vec![0; (w.max(1) * h.max(1) * 4) as usize],
        IntSize::from_wh(w.max(1), h.max(1)).expect("non-zero"),
    )
    .expect("buffer sized for the pixmap")
}

/// Renders a full-frame picture scaled to cover `width`×`height`, centred, cropping the overflow.
fn cover(tree: &usvg::Tree, width: u32, height: u32) -> Pixmap {
    let s = tree.size();
    let scale = (width as f32 / s.width()).max(height as f32 / s.height());
    let tx = (width as f32 - s.width() * scale) / 2.0;
    let ty = (height as f32 - s.height() * scale) / 2.0;
    let mut p = new_pixmap(width, height);
    p.fill(resvg::tiny_skia::Color::BLACK);
    resvg::render(tree, Transform::from_row(scale, 0.0, 0.0, scale, tx, ty), &mut p.as_mut());
    p
}

fn to_i420(p: &Pixmap) -> Vec<u8> {
    let mut out = vec![0; i420_len(p.width(), p.height())];
    rgba_to_i420(p, &mut out);
    out
}

/// Converts an opaque RGBA pixmap to I420 with BT.709 limited-range coefficients (the colorimetry
/// the video caps declare). Chroma is the average of each 2×2 block.
pub fn rgba_to_i420(p: &Pixmap, out: &mut [u8]) {
    let (w, h) = (p.width() as usize, p.height() as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (y_plane, chroma) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    let rgba = p.data();
    for (row, y_row) in y_plane.chunks_exact_mut(w).enumerate() {
        let src = &rgba[row * w * 4..(row + 1) * w * 4];
        for (y, px) in y_row.iter_mut().zip(src.chunks_exact(4)) {
            let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
            *y = (((47 * r + 157 * g + 16 * b + 128) >> 8) + 16) as u8;
        }
    }
    for cy in 0..ch {
        let r0 = 2 * cy;
        let r1 = (r0 + 1).min(h - 1);
        for cx in 0..cw {
            let c0 = 2 * cx;
            let c1 = (c0 + 1).min(w - 1);
            let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
            for (row, col) in [(r0, c0), (r0, c1), (r1, c0), (r1, c1)] {
                let i = (row * w + col) * 4;
                r += rgba[i] as i32;
                g += rgba[i + 1] as i32;
                b += rgba[i + 2] as i32;
            }
            let (r, g, b) = (r / 4, g / 4, b / 4);
            u_plane[cy * cw + cx] = (((-26 * r - 86 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
            v_plane[cy * cw + cx] = (((112 * r - 102 * g - 10 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_pack() -> AssetPath {
        AssetPath::Embedded("avatars/default/avatar.toml".into())
    }

    #[test]
    fn blinks_come_at_natural_intervals() {
        let mut b = BlinkSchedule::new(3, &IdleMotion::default());
        let mut starts = Vec::new();
        let mut prev = Eyes::Open;
        for i in 0..(600 * 100) {
            let t = i as f64 / 100.0;
            let e = b.eyes_at(t);
            if prev == Eyes::Open && e != Eyes::Open {
                starts.push(t);
            }
            prev = e;
        }
        // 10 minutes at one blink per 2–6 s (plus some doubles): between 100 and 360 blinks.
        assert!((100..=360).contains(&starts.len()), "{} blinks", starts.len());
        let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g >= 0.2 && *g <= 6.3), "{gaps:?}");
        assert!(gaps.iter().any(|g| *g < 0.5), "no double blinks");
    }

    #[test]
    fn white_and_black_convert_to_video_range() {
        let mut p = new_pixmap(4, 2);
        p.fill(resvg::tiny_skia::Color::WHITE);
        let out = to_i420(&p);
        assert_eq!(&out[..8], &[235; 8]);
        assert_eq!(&out[8..], &[128, 128, 128, 128]);
        p.fill(resvg::tiny_skia::Color::BLACK);
        assert_eq!(&to_i420(&p)[..8], &[16; 8]);
    }

    #[test]
    fn the_mouth_on_screen_follows_the_pose() {
        let mut a = Avatar::load(&default_pack(), 640, 360, 1).unwrap();
        let (x, y, w, h) = a.mouth_rect();
        let mut frame = vec![0; a.frame_len()];
        let mut dark_pixels = |v: Viseme| {
            a.render_into(&FramePose { time_s: 0.5, mouth: MouthPose::steady(v) }, &mut frame);
            let mut dark = 0;
            for row in y..y + h {
                for col in x..x + w {
                    dark += (frame[(row * 640 + col) as usize] < 60) as u32;
                }
            }
            dark
        };
        let closed = dark_pixels(Viseme::A);
        let wide = dark_pixels(Viseme::D);
        assert!(wide > 10 * closed.max(1), "closed {closed} wide {wide}");
    }

    #[test]
    fn a_pack_missing_a_viseme_is_reported() {
        let text = default_pack().read_to_string().unwrap();
        let broken = text.lines().filter(|l| !l.starts_with("D =")).collect::<Vec<_>>().join("\n");
        let err = SourceText::new("avatar.toml", &broken).parse_toml::<PackManifest>().unwrap_err();
        assert!(err.to_string().contains("missing field `D`"), "{err}");
    }
}
