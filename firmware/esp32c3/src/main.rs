//! tasmota-sim's device core on an ESP32-C3: the same `tasmota-core` the simulator tests,
//! on real hardware.
//!
//! The core decides; this file is the platform (`tasmota_core::platform::Platform`):
//! - console: lines typed on the USB-Serial-JTAG port go to the core's serial input,
//!   console lines print there (esp-println);
//! - MQTT link: WiFi station (esp-radio) + DHCP/DNS/TCP (embassy-net), TLS 1.2 with SNI,
//!   ALPN `mqtt` when the core asks for it and the server checked against Amazon Root CA 1
//!   and ISRG Root X1 (mbedtls-rs, the C3's crypto accelerators);
//! - settings: two flash slots (`store.rs`), written only when the core says so;
//! - relay on GPIO4, status LED on GPIO8 (active low), button on GPIO9 (BOOT);
//! - restart: a software reset, after which the core boots from the saved settings.
//!
//! WiFi credentials are the Tasmota commands `SSId1` and `Password1` (saved; the device
//! restarts and joins), or `WIFI_SSID`/`WIFI_PASSWORD` at build time as the default for
//! a device with none saved. Nothing is needed to build.

#![no_std]
#![no_main]
#![deny(clippy::mem_forget)]

extern crate alloc;

mod store;
mod tls_client_only;

use alloc::boxed::Box;
use alloc::ffi::CString;
use alloc::string::String;
use alloc::vec::Vec;
use core::ffi::CStr;

use embassy_executor::Spawner;
use embassy_futures::select::{select4, Either4};
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Duration, Instant as EmbassyInstant, Timer};
use embedded_io_async::Read as _;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{Input, InputConfig, Level, Output, OutputConfig, Pull};
use esp_hal::rng::{Rng, Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Config as WifiConfig, Interface, WifiController};
use mbedtls_rs::{
    AuthMode, Certificate, ClientSessionConfig, Session, SessionConfig, SessionError, Tls, TlsVersion, X509,
};
use static_cell::StaticCell;
use tasmota_core::mqtt::tls::{error as tls_error, TlsRequest};
use tasmota_core::mqtt::{ConnectRequest, LinkFailure};
use tasmota_core::platform::{drive, Platform};
use tasmota_core::{BootReason, Chip, Device, Hardware, Instant, LogLine, Mac, RestartKind, Settings};

esp_bootloader_esp_idf::esp_app_desc!();

/// Amazon Root CA 1 and ISRG Root X1, the firmware's trust anchors (PEM, NUL-terminated).
const ROOTS_PEM: &str = concat!(include_str!("../certs/roots.pem"), "\0");
const ALPN_MQTT: &CStr = c"mqtt";

const TCP_RX: usize = 4096;
const TCP_TX: usize = 4096;
/// Plaintext read buffer: one TLS record's plaintext at most (MbedTLS's
/// `MBEDTLS_SSL_IN_CONTENT_LEN` in mbedtls-rs-sys), so a read always drains the record.
/// A smaller buffer could leave plaintext inside MbedTLS while the socket has nothing
/// new, and the loop (which waits on the socket) would not see it until more arrived.
const LINK_RX: usize = 16 * 1024;

macro_rules! mk_static {
    ($t:ty, $val:expr) => {{
        static CELL: StaticCell<$t> = StaticCell::new();
        CELL.uninit().write($val)
    }};
}

fn now() -> Instant {
    Instant::from_millis(EmbassyInstant::now().as_millis())
}

/// What the core asked for during one `drive`, carried out afterwards (the link calls
/// are async; `Platform` is not).
struct Io {
    relay: Output<'static>,
    led: Output<'static>,
    store: store::Store<'static>,
    outbox: Vec<u8>,
    connect: Option<ConnectRequest>,
    close: bool,
    restart: Option<RestartKind>,
}

impl Platform for Io {
    fn console(&mut self, line: &LogLine) {
        // What SerialLog lets through (the core decides).
        if line.serial {
            println!("{line}");
        }
    }
    fn connect(&mut self, request: &ConnectRequest) {
        // Bytes queued before this still belong to the old link; `run` writes them first.
        self.connect = Some(request.clone());
    }
    fn transmit(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
    }
    fn close(&mut self) {
        self.close = true;
    }
    fn relays(&mut self, bits: u32) {
        let on = bits & 1 != 0;
        self.relay.set_level(if on { Level::High } else { Level::Low });
        // LedState 1: the LED shows the relay (active low).
        self.led.set_level(if on { Level::Low } else { Level::High });
    }
    fn save_settings(&mut self, settings: &Settings) {
        if let Err(e) = self.store.save(settings) {
            println!("CFG: {e}");
        }
    }
    fn restart(&mut self, kind: RestartKind) {
        self.restart = Some(kind);
    }
}

/// The open MQTT link.
enum Link<'b> {
    Plain(TcpSocket<'b>),
    Tls(Session<'static, TcpSocket<'b>>),
}

impl<'b> Link<'b> {
    fn socket(&mut self) -> &mut TcpSocket<'b> {
        match self {
            Link::Plain(s) => s,
            Link::Tls(s) => s.stream(),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        match self {
            Link::Plain(s) => s.read(buf).await.map_err(|_| ()),
            Link::Tls(s) => s.read(buf).await.map_err(|_| ()),
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        while !bytes.is_empty() {
            let n = match self {
                Link::Plain(s) => s.write(bytes).await.map_err(|_| ())?,
                Link::Tls(s) => s.write(bytes).await.map_err(|_| ())?,
            };
            if n == 0 {
                return Err(());
            }
            bytes = &bytes[n..];
        }
        match self {
            Link::Plain(s) => s.flush().await.map_err(|_| ()),
            Link::Tls(s) => s.flush().await.map_err(|_| ()),
        }
    }

    fn abort(&mut self) {
        match self {
            Link::Plain(s) => s.abort(),
            Link::Tls(s) => s.stream().abort(),
        }
    }
}

/// Network and TLS context shared by every connection.
struct Net {
    stack: Stack<'static>,
    tls: &'static Tls<'static>,
    roots: Option<Certificate<'static>>,
    /// SNI of the MqttHost: fixed for a boot (the core restarts when MqttHost changes).
    sni: Option<&'static CStr>,
}

/// A TLS failure as the firmware numbers it (spec §7).
fn tls_failure(e: SessionError, verify: u32) -> LinkFailure {
    if verify != 0 {
        return LinkFailure::Tls(tls_error::X509_NOT_TRUSTED);
    }
    match e {
        // MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE: the server refused (e.g. no ALPN match).
        SessionError::MbedTls(m) if m.code() == -0x7780 => LinkFailure::Tls(tls_error::alert_received(40)),
        SessionError::MbedTls(m) if m.code() == -0x7F00 => LinkFailure::Tls(tls_error::OUT_OF_MEMORY),
        SessionError::Io(_) => LinkFailure::Tls(tls_error::IO),
        _ => LinkFailure::Tls(tls_error::alert_sent(40)),
    }
}

/// DNS, TCP and (if asked) TLS, within the request's timeout.
async fn open_link<'b>(
    net: &mut Net,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    req: &ConnectRequest,
) -> Result<Link<'b>, LinkFailure> {
    let limit = Duration::from_millis(u64::from(req.timeout_ms).max(1000));
    if !net.stack.is_config_up() {
        embassy_time::with_timeout(Duration::from_secs(10), net.stack.wait_config_up())
            .await
            .map_err(|_| LinkFailure::Tcp)?;
    }
    let addr = match req.host.parse::<core::net::Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => {
            let found = net.stack.dns_query(&req.host, DnsQueryType::A).await.map_err(|_| LinkFailure::Dns)?;
            match found.first() {
                Some(embassy_net::IpAddress::Ipv4(a)) => *a,
                _ => return Err(LinkFailure::Dns),
            }
        }
    };
    let mut socket = TcpSocket::new(net.stack, rx, tx);
    socket.set_timeout(Some(Duration::from_secs(60)));
    embassy_time::with_timeout(limit, socket.connect((addr, req.port)))
        .await
        .map_err(|_| LinkFailure::Tcp)?
        .map_err(|_| LinkFailure::Tcp)?;
    let Some(tls) = &req.tls else {
        return Ok(Link::Plain(socket));
    };
    Ok(Link::Tls(handshake(net, socket, tls, limit).await?))
}

async fn handshake<'b>(
    net: &mut Net,
    socket: TcpSocket<'b>,
    tls: &TlsRequest,
    limit: Duration,
) -> Result<Session<'static, TcpSocket<'b>>, LinkFailure> {
    let sni = match net.sni {
        Some(s) => s,
        None => {
            let s = CString::new(tls.server_name.as_str()).map_err(|_| LinkFailure::Dns)?;
            let s: &'static CStr = Box::leak(s.into_boxed_c_str());
            net.sni = Some(s);
            s
        }
    };
    static ALPN: [&CStr; 1] = [ALPN_MQTT];
    let mut conf = ClientSessionConfig::new();
    conf.server_name = Some(sni);
    conf.min_version = TlsVersion::Tls1_2;
    conf.alpn_protocols = tls.alpn.map(|_| &ALPN[..]);
    // SetOption132 fingerprints are not implemented on the chip: the CA check is used.
    conf.ca_chain = net.roots.clone();
    // Fail closed: with no trust anchors every server is refused, never accepted unchecked.
    conf.auth_mode = AuthMode::Required;
    let mut session = Session::new(net.tls.reference(), socket, &SessionConfig::Client(conf))
        .map_err(|_| LinkFailure::Tls(tls_error::OUT_OF_MEMORY))?;
    match embassy_time::with_timeout(limit, session.connect()).await {
        Err(_) => Err(LinkFailure::Tls(tls_error::HANDSHAKE_TIMEOUT)),
        Ok(Err(e)) => Err(tls_failure(e, session.tls_verification_details())),
        Ok(Ok(())) => Ok(session),
    }
}

/// Why the event loop stopped.
enum Exit {
    /// The core asked for a (new) link.
    Connect(ConnectRequest),
    /// The link closed (by the core or the peer).
    Closed,
}

/// Inputs: console bytes, the button, the core's timers and (if open) the link, until the
/// core asks for a link or the open one closes.
async fn run(
    dev: &mut Device,
    io: &mut Io,
    console: &mut esp_hal::usb::usb_serial_jtag::UsbSerialJtagRx<'static, esp_hal::Async>,
    button: &mut Input<'static>,
    rbuf: &mut [u8],
    mut link: Option<&mut Link<'_>>,
) -> Exit {
    let mut cbuf = [0u8; 64];
    loop {
        // Carry out what the core queued, in its order: bytes it wrote before a close,
        // a new connect or a restart go out first.
        drive(dev, io);
        if let Some(l) = link.as_deref_mut() {
            if !io.outbox.is_empty() {
                let bytes = core::mem::take(&mut io.outbox);
                if l.write_all(&bytes).await.is_err() {
                    l.abort();
                    io.close = false;
                    dev.handle_link_closed(now());
                    drive(dev, io);
                    return Exit::Closed;
                }
            }
            if io.close {
                io.close = false;
                l.abort();
                return Exit::Closed;
            }
        } else {
            io.close = false;
            io.outbox.clear();
        }
        if let Some(kind) = io.restart.take() {
            if let Some(l) = link.as_deref_mut() {
                l.abort();
            }
            Timer::after(Duration::from_millis(100)).await;
            match kind {
                RestartKind::Restart => esp_hal::system::software_reset(),
                // Halt, DeepSleep (and anything the core adds): stop here until power off.
                _ => loop {
                    Timer::after(Duration::from_secs(3600)).await;
                },
            }
        }
        if let Some(req) = io.connect.take() {
            if let Some(l) = link.as_deref_mut() {
                l.abort();
            }
            return Exit::Connect(req);
        }

        let wake = dev.poll_timeout().map(|t| EmbassyInstant::from_millis(t.as_millis()));
        let timer = async {
            match wake {
                Some(t) => Timer::at(t).await,
                None => core::future::pending::<()>().await,
            }
        };
        // Readiness only: a TLS read is not cancel-safe, so it runs outside the select.
        let link_ready = async {
            match link.as_deref_mut() {
                Some(l) => l.socket().wait_read_ready().await,
                None => core::future::pending::<()>().await,
            }
        };
        match select4(console.read(&mut cbuf), button.wait_for_falling_edge(), timer, link_ready).await {
            Either4::First(Ok(n)) => dev.handle_serial(&cbuf[..n], now()),
            Either4::First(Err(_)) => {}
            Either4::Second(()) => {
                // 50 ms debounce; still pressed: a single press (ButtonHandler).
                Timer::after(Duration::from_millis(50)).await;
                if button.is_low() {
                    let _ = dev.handle_button(1, now());
                }
            }
            Either4::Third(()) => dev.handle_timeout(now()),
            Either4::Fourth(()) => {
                let Some(l) = link.as_deref_mut() else { continue };
                match l.read(rbuf).await {
                    Ok(n) if n > 0 => dev.handle_received(&rbuf[..n], now()),
                    _ => {
                        l.abort();
                        dev.handle_link_closed(now());
                        drive(dev, io);
                        return Exit::Closed;
                    }
                }
            }
        }
    }
}

#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>, ssid: String, password: String) {
    if ssid.is_empty() {
        println!("WIF: No SSId set: type SSId1 <name> and Password1 <password>");
        return;
    }
    let auth = match password.as_str().try_into() {
        Ok(p) if !password.is_empty() => AuthenticationMethodConfig::Wpa2Personal(p),
        _ => AuthenticationMethodConfig::Open,
    };
    let Ok(name) = ssid.as_str().try_into() else {
        println!("WIF: SSId1 is too long");
        return;
    };
    let config = WifiConfig::Station(StationConfig::default().with_ssid(name).with_authentication(auth));
    if controller.set_config(&config).is_err() {
        println!("WIF: WiFi configuration refused");
        return;
    }
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("WIF: Connected to {ssid}");
                let _ = controller.wait_for_disconnect_async().await;
                println!("WIF: Disconnected");
            }
            Err(_) => println!("WIF: Connect failed to {ssid}, retry in 5 sec"),
        }
        Timer::after(Duration::from_secs(5)).await;
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 66320);
    // TLS buffers and the core's strings.
    esp_alloc::heap_allocator!(size: 72 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let (mut console, _tx) = UsbSerialJtag::new(peripherals.USB_DEVICE).into_async().split();
    let relay = Output::new(peripherals.GPIO4, Level::Low, OutputConfig::default());
    let led = Output::new(peripherals.GPIO8, Level::High, OutputConfig::default());
    let mut button = Input::new(peripherals.GPIO9, InputConfig::default().with_pull(Pull::Up));

    let mut store = store::Store::new(esp_storage::FlashStorage::new(peripherals.FLASH));
    let mut settings = store.load().unwrap_or_default();
    if settings.sta_ssid[0].is_empty() {
        settings.sta_ssid[0] = String::from(option_env!("WIFI_SSID").unwrap_or(""));
        settings.sta_pwd[0] = String::from(option_env!("WIFI_PASSWORD").unwrap_or(""));
    }

    let mac = esp_hal::efuse::base_mac_address();
    let mut m = [0u8; 6];
    m.copy_from_slice(&mac.as_bytes()[..6]);
    let hw = Hardware {
        mac: Mac(m),
        module: String::from("ESP32C3"),
        module_number: 1,
        chip: Chip::Esp32C3,
        cpu_mhz: 160,
        ..Hardware::default()
    };

    // Network: WiFi station, DHCP, DNS.
    let controller = WifiController::new(peripherals.WIFI, Default::default()).expect("WiFi controller");
    let sta = Interface::station();
    let rng = Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let resources = mk_static!(StackResources<3>, StackResources::<3>::new());
    let (stack, runner) = embassy_net::new(sta, embassy_net::Config::dhcpv4(Default::default()), resources, seed);
    let ssid = settings.sta_ssid[usize::from(settings.sta_active.min(1))].clone();
    let password = settings.sta_pwd[usize::from(settings.sta_active.min(1))].clone();
    spawner.spawn(wifi_task(controller, ssid, password).expect("wifi task"));
    spawner.spawn(net_task(runner).expect("net task"));

    // TLS: one mbedtls instance for the program, seeded by the true RNG.
    let _trng_source = mk_static!(TrngSource<'static>, TrngSource::new(peripherals.RNG, peripherals.ADC1));
    let trng = mk_static!(Trng, Trng::try_new().expect("TRNG"));
    let tls = mk_static!(Tls<'static>, Tls::new(trng).expect("one TLS instance"));
    let roots =
        CStr::from_bytes_with_nul(ROOTS_PEM.as_bytes()).ok().and_then(|pem| Certificate::new(X509::PEM(pem)).ok());
    if roots.is_none() {
        println!("MQT: TLS trust anchors did not parse: TLS connections will be refused");
    }
    let mut net = Net { stack, tls, roots, sni: None };

    let mut dev = Device::boot(hw, settings, BootReason::PowerOn, now());
    let mut io = Io { relay, led, store, outbox: Vec::new(), connect: None, close: false, restart: None };
    let rx = mk_static!([u8; TCP_RX], [0; TCP_RX]);
    let tx = mk_static!([u8; TCP_TX], [0; TCP_TX]);
    let rbuf = &mut mk_static!([u8; LINK_RX], [0; LINK_RX])[..];

    let mut exit = run(&mut dev, &mut io, &mut console, &mut button, rbuf, None).await;
    loop {
        exit = match exit {
            Exit::Connect(req) => match open_link(&mut net, &mut rx[..], &mut tx[..], &req).await {
                Ok(mut link) => {
                    dev.handle_link_up(now());
                    run(&mut dev, &mut io, &mut console, &mut button, rbuf, Some(&mut link)).await
                }
                Err(failure) => {
                    dev.handle_link_failed(failure, now());
                    run(&mut dev, &mut io, &mut console, &mut button, rbuf, None).await
                }
            },
            Exit::Closed => run(&mut dev, &mut io, &mut console, &mut button, rbuf, None).await,
        };
    }
}
