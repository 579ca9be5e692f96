//! The fleet's own broker (`--virtual [PROFILE]`, `--embedded [PROFILE]`): the embedded
//! broker of `tasmota-sim broker`, in this process, as `plain` (Mosquitto, anonymous,
//! port 1883) or `aws-iot` (AWS IoT Core: TLS on port 443 with ALPN `mqtt` through the
//! TasmotaAuth custom authorizer, the data endpoint's name in the certificate, retain
//! refused), and where devices and the operator reach it.
//!
//! With `aws-iot` every device is set up as Tasmota's AWS IoT guide says (SetOption103 1,
//! MqttHost the endpoint, MqttPort 443, MqttUser
//! `tasmota?x-amz-customauthorizer-name=TasmotaAuth`, MqttPassword the authorizer's
//! token), so it takes the firmware's AWS path: ALPN `mqtt`, SNI the endpoint, retain
//! forced off (`MqttInit`). A self-signed CA stands in for Amazon Root CA 1, as in the
//! scenario library. The operator is the AWS console's MQTT client: signed in with IAM,
//! here an in-memory link presenting a verified client certificate. AWS IoT Core's 100
//! publishes per second per connection is not enforced: the operator's one connection
//! would lose most answers of a group command to it.

use std::sync::Arc;

use rustls::RootCertStore;
use tasmota_core::Settings;

use crate::broker::{self, Broker, Config, LinkInfo, ProfileName, TlsInfo, TlsListen};
use crate::link::{BoxStream, Connector, TlsCompat, Trust};
use crate::scenario::file::BrokerSpec;
use crate::scenario::world::{EmbeddedBroker, EmbeddedNet};

/// The host name devices use for the broker of a plain `--virtual` fleet.
pub const VIRTUAL_BROKER_HOST: &str = "broker.fleet";

/// The custom authorizer of an `aws-iot` fleet broker, and the MqttUser naming it.
pub const AUTHORIZER: &str = "TasmotaAuth";
pub const AWS_USER: &str = "tasmota?x-amz-customauthorizer-name=TasmotaAuth";
/// Its token when `--password` gives none.
pub const DEFAULT_TOKEN: &str = "tasmota-sim-fleet";

/// The fleet's broker and how to reach it.
#[derive(Clone)]
pub struct FleetBroker {
    pub broker: Broker,
    pub profile: ProfileName,
    /// What devices set as MqttHost and MqttPort.
    pub host: String,
    pub port: u16,
    /// The TLS listener (aws-iot).
    pub tls: Option<TlsListen>,
    /// The CA devices trust (aws-iot).
    pub roots: Option<Arc<RootCertStore>>,
}

impl FleetBroker {
    /// A broker of `profile`; `token` is the aws-iot authorizer's token.
    pub fn new(profile: ProfileName, token: &str) -> Result<FleetBroker, String> {
        let mut config = Config::new(profile);
        // AWS IoT Core's 100 publishes per second per connection would drop most of the
        // answers the fleet's one operator connection receives (it stands for the whole
        // cloud side: rules, many subscribers). A device never comes near it.
        config.profile.limits.publishes_per_second = None;
        match profile {
            ProfileName::Plain => Ok(FleetBroker {
                broker: Broker::new(config),
                profile,
                host: VIRTUAL_BROKER_HOST.into(),
                port: 1883,
                tls: None,
                roots: None,
            }),
            ProfileName::AwsIot => {
                let endpoint = broker::DEFAULT_ENDPOINT.to_string();
                config.authorizers = vec![format!("{AUTHORIZER}:{token}")
                    .parse()
                    .map_err(|e| format!("--password as the {AUTHORIZER} token: {e}"))?];
                let dir = crate::scenario::default_tls_dir().join("fleet");
                let material = broker::tls::self_signed(&dir, std::slice::from_ref(&endpoint))
                    .map_err(|e| format!("TLS setup: {e}"))?;
                let acceptors = broker::tls::Acceptors::new(&material).map_err(|e| format!("TLS setup: {e}"))?;
                Ok(FleetBroker {
                    broker: Broker::new(config),
                    profile,
                    host: endpoint,
                    port: 443,
                    tls: Some(TlsListen { acceptors: Arc::new(acceptors), mtls: false }),
                    roots: Some(Arc::new(material.client_ca.clone().unwrap_or_else(RootCertStore::empty))),
                })
            }
        }
    }

    /// What this broker's profile asks of a device beyond what every broker gets
    /// (MqttHost, MqttPort, the `--user`/`--password` login, SetOption103 for TLS): on
    /// aws-iot, the TasmotaAuth user and token (`login` overrides them); on plain, nothing.
    pub fn configure(&self, settings: &mut Settings, login: Option<&(String, String)>) {
        if self.profile == ProfileName::AwsIot {
            settings.set_option(103, 1);
            settings.mqtt_user = login.map_or(AWS_USER, |l| &l.0).to_string();
            settings.mqtt_pwd = login.map_or(DEFAULT_TOKEN, |l| &l.1).to_string();
        }
    }

    /// The device side of TLS: trusts this broker's CA.
    pub fn client(&self, base: &Connector) -> Connector {
        let mut c = base.clone();
        if let Some(roots) = &self.roots {
            c.trust = Trust::Roots(roots.clone());
            c.compat = TlsCompat::Firmware;
        }
        c
    }

    /// In-memory links to this broker (`--virtual`), at the host and port devices use.
    pub fn virtual_net(&self, base: &Connector) -> EmbeddedNet {
        let tls = self.tls.is_some();
        let spec = BrokerSpec {
            name: "fleet".into(),
            profile: self.profile,
            host: self.host.clone(),
            port: (!tls).then_some(self.port),
            tls_port: tls.then_some(self.port),
            users: Vec::new(),
            authorizers: Vec::new(),
            default_authorizer: None,
            endpoint: None,
            allow_retain: false,
            limits: Vec::new(),
            faults: Vec::new(),
            external: false,
        };
        EmbeddedNet {
            brokers: vec![EmbeddedBroker { spec, broker: self.broker.clone(), tls: self.tls.clone() }],
            client: self.client(base),
        }
    }

    /// An in-memory link for the fleet's operator; on aws-iot it is the AWS console's
    /// client (a verified client certificate on the ALPN that allows it).
    pub fn operator_link(&self) -> BoxStream {
        let (client, server) = tokio::io::duplex(1 << 16);
        let tls = (self.profile == ProfileName::AwsIot).then(|| TlsInfo {
            sni: Some(self.host.clone()),
            alpn: Some(b"x-amzn-mqtt-ca".to_vec()),
            client_cert: true,
            mtls_listener: false,
        });
        let b = self.broker.clone();
        tokio::spawn(async move { b.serve(server, LinkInfo { peer: "fleet operator".into(), tls }).await });
        Box::pin(client)
    }
}
