//! What the fuzz targets share: a device driven on a virtual clock (booted, linked,
//! connected), a current-thread runtime on tokio's paused clock with a bounded time per
//! input, and the split of an input into chunks.
//!
//! Every target is a `fuzz_targets/*.rs` file of a few lines over these; FUZZING.md says
//! how they are built and run.

use std::future::Future;
use std::time::Duration;

use tasmota_core::{BootReason, Device, Hardware, Instant, LinkFailure, Output, Settings};

/// The broker host every fuzzed device is configured with.
pub const BROKER_HOST: &str = "broker.lan";
/// CONNACK, accepted.
pub const CONNACK_ACCEPTED: [u8; 4] = [0x20, 2, 0, 0];
/// Virtual time after which a device run stops, however busy the device still is.
const MAX_RUN_MS: u64 = 600_000;

/// How the driver answers the device's [`Output::Connect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The link opens (`handle_link_up`): the device sends CONNECT.
    Up,
    /// The link fails at TCP (`handle_link_failed`).
    Refused,
}

/// Drains every output, answering a connect request as `link` says. Returns whether the
/// device asked to connect.
pub fn drain(d: &mut Device, link: Link) -> bool {
    let mut asked = false;
    while let Some(out) = d.poll_output() {
        if let Output::Connect(_) = out {
            asked = true;
            let now = d.now();
            match link {
                Link::Up => d.handle_link_up(now),
                Link::Refused => d.handle_link_failed(LinkFailure::Tcp, now),
            }
        }
    }
    asked
}

/// Runs the device's timers up to `ms` later than its clock, draining after each; stops
/// early once the device asks to connect and `stop_at_connect` is set.
pub fn run_for(d: &mut Device, ms: u64, link: Link, stop_at_connect: bool) {
    let until = d.now().plus_millis(ms.min(MAX_RUN_MS));
    while let Some(t) = d.poll_timeout().filter(|t| *t <= until) {
        d.handle_timeout(t);
        if drain(d, link) && stop_at_connect {
            return;
        }
    }
}

/// Boots a device on `hw` and `settings` at time 0, with its boot outputs drained.
pub fn boot(hw: Hardware, settings: Settings) -> Device {
    let mut d = Device::boot(hw, settings, BootReason::PowerOn, Instant::from_millis(0));
    drain(&mut d, Link::Refused);
    d
}

/// Boots a device with outside settings or hardware (a loaded profile or settings file)
/// and lets it live for a minute with its links opening: boot, WiFi, CONNECT, telemetry.
pub fn boot_and_run(hw: Hardware, settings: Settings) {
    let mut d = boot(hw, settings);
    run_for(&mut d, 60_000, Link::Up, false);
}

/// A device with a broker configured, its MQTT link just opened: CONNECT sent, no
/// CONNACK yet.
pub fn linked_device() -> Device {
    let settings = Settings { mqtt_host: BROKER_HOST.into(), ..Settings::default() };
    let mut d = boot(Hardware::default(), settings);
    run_for(&mut d, 10_000, Link::Up, true);
    d
}

/// A device connected to its broker (CONNACK accepted, subscriptions and INFO sent).
pub fn connected_device() -> Device {
    let mut d = linked_device();
    let now = d.now();
    d.handle_received(&CONNACK_ACCEPTED, now);
    drain(&mut d, Link::Up);
    d
}

/// Feeds `data` to `d` chunk by chunk (see [`chunks`]) through `input`, one of the
/// device's byte inputs (`Device::handle_serial`, `Device::handle_received`), draining
/// after each chunk; then lets the device live for a minute.
pub fn feed_and_run(mut d: Device, data: &[u8], input: fn(&mut Device, &[u8], Instant)) {
    for chunk in chunks(data) {
        let now = d.now();
        input(&mut d, chunk, now);
        drain(&mut d, Link::Up);
    }
    run_for(&mut d, 60_000, Link::Up, false);
}

/// Splits an input into its chunks: the first byte is the chunk size (0: all in one),
/// so one input also says how the bytes arrive.
pub fn chunks(data: &[u8]) -> std::slice::Chunks<'_, u8> {
    let (size, rest) = data.split_first().map(|(n, rest)| (usize::from(*n), rest)).unwrap_or((0, data));
    let size = if size == 0 { rest.len().max(1) } else { size };
    rest.chunks(size)
}

/// Runs `f` on a fresh current-thread runtime on tokio's paused clock, for at most
/// `limit` of virtual time: timers (keepalives, request timeouts) fire as soon as nothing
/// else can run, so every input ends quickly. A runtime per input leaves nothing behind.
pub fn run_bounded<F: Future<Output = ()>>(limit: Duration, f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let _ = tokio::time::timeout(limit, f).await;
    });
}

/// Writes `input` into `stream` (chunked as [`chunks`] says) and then closes the write
/// half, while reading and dropping everything the other end sends back, until it closes.
pub async fn exchange<S>(stream: S, input: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rx, mut tx) = tokio::io::split(stream);
    let write = async {
        for chunk in chunks(input) {
            if tx.write_all(chunk).await.is_err() {
                return;
            }
            // Lets the other end read this chunk on its own.
            tokio::task::yield_now().await;
        }
        let _ = tx.shutdown().await;
    };
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(1..) = rx.read(&mut buf).await {}
    };
    tokio::join!(write, read);
}

/// An empty directory of this process, for loaders that read files: the settings file
/// is written here, and a scenario "lives" here so the profiles it names by relative
/// path are looked up in an empty place.
pub fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path()
}
