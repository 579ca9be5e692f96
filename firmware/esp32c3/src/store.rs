//! Settings in flash, written so a power cut never loses them: two 4 KiB sectors in the
//! NVS partition's place (0x9000 and 0xA000 in the default partition table; the firmware
//! uses no ESP-IDF NVS), each holding `magic, sequence, length, CRC-32, postcard bytes`.
//! A save erases and writes the older slot; a load takes the valid slot with the highest
//! sequence. A torn write leaves a bad CRC in the slot being written and the other one
//! intact; a save reads its slot back and fails if it does not hold what was written.
//!
//! The body is postcard, which is not self-describing: a firmware whose `Settings` gained
//! or lost a field does not read the old slots and boots with defaults (then the
//! `WIFI_SSID`/`WIFI_PASSWORD` build-time values, if any).

use alloc::vec;
use alloc::vec::Vec;

use esp_storage::FlashStorage;
use tasmota_core::Settings;

const MAGIC: u32 = 0x5453_494D; // "TSIM"
const SLOTS: [u32; 2] = [0x9000, 0xA000];
const SECTOR: usize = 4096;
const HEADER: usize = 16;

/// CRC-32 (IEEE), bitwise: small, and settings are saved rarely.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

pub struct Store<'d> {
    flash: FlashStorage<'d>,
    seq: u32,
    /// Slot index the next save writes.
    next: usize,
}

impl<'d> Store<'d> {
    pub fn new(flash: FlashStorage<'d>) -> Self {
        Store { flash, seq: 0, next: 0 }
    }

    fn read_slot(&mut self, i: usize) -> Option<(u32, Settings)> {
        let mut header = [0u8; HEADER];
        self.flash.read(SLOTS[i], &mut header).ok()?;
        let word = |n: usize| u32::from_le_bytes([header[n], header[n + 1], header[n + 2], header[n + 3]]);
        let (magic, seq, len, crc) = (word(0), word(4), word(8) as usize, word(12));
        if magic != MAGIC || len > SECTOR - HEADER {
            return None;
        }
        let mut body = vec![0u8; len];
        self.flash.read(SLOTS[i] + HEADER as u32, &mut body).ok()?;
        if crc32(&body) != crc {
            return None;
        }
        let settings = postcard::from_bytes::<Settings>(&body).ok()?;
        Some((seq, settings))
    }

    /// The newest valid settings, if any.
    pub fn load(&mut self) -> Option<Settings> {
        let a = self.read_slot(0);
        let b = self.read_slot(1);
        let (i, found) = match (a, b) {
            // Newer by sequence, across a wrap of the counter.
            (Some(a), Some(b)) if (b.0.wrapping_sub(a.0) as i32) > 0 => (1, Some(b)),
            (Some(a), _) => (0, Some(a)),
            (None, Some(b)) => (1, Some(b)),
            (None, None) => (1, None),
        };
        self.seq = found.as_ref().map_or(0, |f| f.0);
        self.next = 1 - i;
        found.map(|f| f.1)
    }

    /// Writes `settings` into the older slot.
    pub fn save(&mut self, settings: &Settings) -> Result<(), &'static str> {
        let body: Vec<u8> = postcard::to_allocvec(settings).map_err(|_| "settings do not serialise")?;
        if body.len() > SECTOR - HEADER {
            return Err("settings larger than a sector");
        }
        let seq = self.seq.wrapping_add(1);
        let mut image = Vec::with_capacity(HEADER + body.len());
        for w in [MAGIC, seq, body.len() as u32, crc32(&body)] {
            image.extend_from_slice(&w.to_le_bytes());
        }
        image.extend_from_slice(&body);
        // FlashStorage::write erases what it needs (read-modify-write per sector).
        self.flash.write(SLOTS[self.next], &image).map_err(|_| "flash write failed")?;
        // Verify: read back what was written.
        let mut back = vec![0u8; image.len()];
        self.flash.read(SLOTS[self.next], &mut back).map_err(|_| "flash read-back failed")?;
        if back != image {
            return Err("flash read-back differs from what was written");
        }
        self.seq = seq;
        self.next = 1 - self.next;
        Ok(())
    }
}
