//! What a fleet's traffic would cost on AWS IoT Core: messaging metered in 5 KB steps,
//! connectivity in connection-minutes, at a region's published prices
//! (`fixtures/aws-iot-pricing.toml`, with its sources and date), scaled to a day and a
//! 30-day month, next to the Free Tier allowance.
//!
//! Metering (AWS IoT Core pricing, "additional metering details"): a PUBLISH received
//! from a device and a PUBLISH sent by the service are each metered on topic + payload
//! bytes, in 5 KB increments; PINGREQ/PINGRESP, CONNACK, SUBACK, DISCONNECT and the
//! service's PUBACK are free. Connectivity is metered in one-minute increments.

use serde::{Deserialize, Serialize};

/// The pricing data file, compiled in.
pub const PRICING_TOML: &str = include_str!("../../fixtures/aws-iot-pricing.toml");

/// One message unit: 5 KB (AWS meters 5 KB as 5 × 1024 bytes).
pub const MESSAGE_UNIT_BYTES: u64 = 5 * 1024;

#[derive(Debug, Deserialize)]
struct PricingFile {
    source: String,
    date: String,
    free_tier: FreeTier,
    region: Vec<Region>,
}

/// The Free Tier's monthly allowance (12 months from account creation).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FreeTier {
    pub connection_minutes: u64,
    pub messages: u64,
}

/// One region's list prices.
#[derive(Debug, Clone, Deserialize)]
pub struct Region {
    pub name: String,
    pub usd_per_million_connection_minutes: f64,
    /// Messaging tiers: (up to this many messages a month, USD per million); the last
    /// tier's bound is ignored.
    pub message_tiers: Vec<(u64, f64)>,
}

/// The pricing table.
#[derive(Debug)]
pub struct Pricing {
    pub source: String,
    pub date: String,
    pub free_tier: FreeTier,
    pub regions: Vec<Region>,
}

impl Pricing {
    /// The compiled-in table.
    pub fn builtin() -> Pricing {
        Pricing::parse(PRICING_TOML).expect("fixtures/aws-iot-pricing.toml is checked by a test")
    }

    pub fn parse(text: &str) -> Result<Pricing, String> {
        let f: PricingFile = toml::from_str(text).map_err(|e| format!("aws-iot-pricing.toml: {e}"))?;
        Ok(Pricing { source: f.source, date: f.date, free_tier: f.free_tier, regions: f.region })
    }

    pub fn region(&self, name: &str) -> Result<&Region, String> {
        self.regions.iter().find(|r| r.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
            format!("--aws-region {name}: no prices for it (known: {})", known.join(", "))
        })
    }
}

/// What a run metered, as AWS would count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metered {
    /// Message units (5 KB steps) published by devices and delivered to them.
    pub messages: u64,
    /// Connection time, each connection rounded up to whole minutes.
    pub connection_minutes: u64,
}

/// Message units for one PUBLISH of `bytes` (topic + payload): at least one.
pub fn message_units(bytes: u64) -> u64 {
    bytes.div_ceil(MESSAGE_UNIT_BYTES).max(1)
}

/// The bill, in the report's `aws_iot` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bill {
    pub region: String,
    pub messages: u64,
    pub connection_minutes: u64,
    /// The run's traffic scaled to 24 hours.
    pub usd_per_day: f64,
    /// 30 days of it.
    pub usd_per_month: f64,
    /// Whether a month of it stays inside the Free Tier allowance.
    pub within_free_tier: bool,
    pub prices_from: String,
}

/// Prices `metered` over `run_seconds` of fleet time in `region`, scaled to a day and a
/// month (30 days).
pub fn bill(pricing: &Pricing, region: &Region, metered: Metered, run_seconds: f64) -> Bill {
    let per_day = if run_seconds > 0.0 { 86_400.0 / run_seconds } else { 0.0 };
    let day_messages = metered.messages as f64 * per_day;
    let day_minutes = metered.connection_minutes as f64 * per_day;
    let month_messages = day_messages * 30.0;
    let month_minutes = day_minutes * 30.0;
    let month = messaging_usd(region, month_messages) + month_minutes / 1e6 * region.usd_per_million_connection_minutes;
    let within_free_tier = month_messages <= pricing.free_tier.messages as f64
        && month_minutes <= pricing.free_tier.connection_minutes as f64;
    Bill {
        region: region.name.clone(),
        messages: metered.messages,
        connection_minutes: metered.connection_minutes,
        usd_per_day: round_cents(month / 30.0),
        usd_per_month: round_cents(month),
        within_free_tier,
        prices_from: format!("{} ({})", pricing.source, pricing.date),
    }
}

/// Tiered messaging price for `n` messages in a month.
fn messaging_usd(region: &Region, n: f64) -> f64 {
    let mut left = n;
    let mut floor = 0.0;
    let mut usd = 0.0;
    for (i, (upto, price)) in region.message_tiers.iter().enumerate() {
        let last = i + 1 == region.message_tiers.len();
        let span = if last { left } else { (*upto as f64 - floor).max(0.0).min(left) };
        usd += span / 1e6 * price;
        left -= span;
        floor = *upto as f64;
        if left <= 0.0 {
            break;
        }
    }
    usd
}

fn round_cents(usd: f64) -> f64 {
    (usd * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pricing_file_parses_and_has_the_free_tier() {
        let p = Pricing::builtin();
        assert_eq!(p.free_tier.messages, 500_000);
        assert_eq!(p.free_tier.connection_minutes, 2_250_000);
        assert!(p.region("us-east-1").is_ok());
        assert!(p.region("mars-1").unwrap_err().contains("known: "));
    }

    #[test]
    fn messages_are_metered_in_5_kb_steps() {
        assert_eq!(message_units(0), 1);
        assert_eq!(message_units(5120), 1);
        assert_eq!(message_units(5121), 2);
        assert_eq!(message_units(12_000), 3);
    }

    #[test]
    fn the_free_tier_example_fits_and_twice_it_does_not() {
        // AWS's example: 50 devices connected all day, 300 messages a day each.
        let p = Pricing::builtin();
        let r = p.region("us-east-1").unwrap();
        let day = Metered { messages: 50 * 300, connection_minutes: 50 * 1440 };
        let b = bill(&p, r, day, 86_400.0);
        assert!(b.within_free_tier, "{b:?}");
        // 450,000 messages at $1/M + 2,160,000 minutes at $0.08/M.
        assert_eq!(b.usd_per_month, 0.62);
        let twice = Metered { messages: 2 * 50 * 300, connection_minutes: 100 * 1440 };
        assert!(!bill(&p, r, twice, 86_400.0).within_free_tier);
    }

    #[test]
    fn messaging_tiers_apply_in_order() {
        let r = Region {
            name: "x".into(),
            usd_per_million_connection_minutes: 0.0,
            message_tiers: vec![(1_000_000, 1.0), (2_000_000, 0.5), (0, 0.25)],
        };
        assert_eq!(messaging_usd(&r, 500_000.0), 0.5);
        assert_eq!(messaging_usd(&r, 3_000_000.0), 1.0 + 0.5 + 0.25);
    }
}
