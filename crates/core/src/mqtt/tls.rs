//! TLS as the firmware chooses it (spec §7, `MqttInit`): whether to use it, the server
//! name, ALPN for AWS IoT on port 443, how the server is validated, and the error code
//! numbering of `MQT: TLS connection error: <n>`. The driver carries these out.

use alloc::string::String;

/// ALPN protocol AWS IoT Core needs for MQTT on port 443.
pub const ALPN_MQTT: &str = "mqtt";

/// The one cipher suite the firmware's BearSSL client offers (TLS 1.2 only).
pub const FIRMWARE_CIPHER_SUITE: &str = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256";

/// `getMaxThunkStackUse()` as a real ESP8266 reported it after an AWS IoT handshake
/// (`MQT: TLS connected in 1753 ms, max ThunkStack used 4596`, Tasmota AWS IoT guide).
pub const THUNK_STACK_USED: u32 = 4596;
/// What ESP32 builds report instead: `stack low mark` of the TLS task, bytes.
pub const STACK_LOW_MARK: u32 = 3284;

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    /// SetOption132 0: the certificate chain must lead to one of the firmware's trust
    /// anchors (Amazon Root CA 1, ISRG Root X1) and name the server.
    TrustAnchors,
    /// SetOption132 1: public-key fingerprints, two slots (all `00` learns, all `FF`
    /// accepts anything).
    Fingerprints([[u8; 20]; 2]),
}

/// The TLS parameters of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRequest {
    /// SNI and the name the certificate must carry: MqttHost as configured.
    pub server_name: String,
    /// `Some("mqtt")` only for TLS on port 443 to an AWS IoT endpoint.
    pub alpn: Option<&'static str>,
    pub validation: Validation,
}

/// `MqttInit`'s AWS test: `host.indexOf(".iot.") && host.endsWith(".amazonaws.com")`.
/// `indexOf` returns -1 (true) when `.iot.` is absent, so only a host that starts with
/// `.iot.` fails the first half: in practice only the suffix counts.
pub fn is_aws_iot_host(host: &str) -> bool {
    let iot_at_start = host.starts_with(".iot.");
    !iot_at_start && host.ends_with(".amazonaws.com")
}

/// Error codes of `MQT: TLS connection error: <n>` (spec §7, BearSSL `BR_ERR_*`).
pub mod error {
    pub const OUT_OF_MEMORY: i32 = -1000;
    pub const CANT_RESOLVE_IP: i32 = -1001;
    pub const CANT_CONNECT: i32 = -1002;
    pub const MISSING_CA: i32 = -1004;
    pub const HANDSHAKE_TIMEOUT: i32 = -1005;
    pub const BAD_FINGERPRINT: i32 = 1;
    pub const BAD_CIPHER_SUITE: i32 = 16;
    pub const LIMIT_EXCEEDED: i32 = 23;
    pub const IO: i32 = 31;
    pub const X509_EXPIRED: i32 = 54;
    pub const X509_BAD_SERVER_NAME: i32 = 56;
    pub const X509_NOT_TRUSTED: i32 = 62;
    /// A fatal alert the server sent: 256 + the alert number (296 handshake failure,
    /// 326 protocol version, 376 no application protocol).
    pub const fn alert_received(alert: u8) -> i32 {
        256 + alert as i32
    }
    /// A fatal alert the device sent: 512 + the alert number.
    pub const fn alert_sent(alert: u8) -> i32 {
        512 + alert as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_detection_is_the_suffix_only() {
        assert!(is_aws_iot_host("a1b2c3-ats.iot.eu-west-1.amazonaws.com"));
        // The `.iot.` half is a no-op as coded.
        assert!(is_aws_iot_host("example.amazonaws.com"));
        assert!(!is_aws_iot_host("broker.example.com"));
        assert!(!is_aws_iot_host("a1b2c3-ats.iot.eu-west-1.amazonaws.com.evil"));
        assert_eq!(error::alert_received(40), 296);
        assert_eq!(error::alert_received(120), 376);
        assert_eq!(error::alert_sent(48), 560);
    }
}
