//! Tasmota's Unishox compressor (`lib/default/Unishox-1.0-shadinger/src/unishox.cpp` of
//! 14.2.0, class `Unishox`, `unishox_compress`), as the Rules use it (`SetRule`): the
//! byte count of a dry run (no output buffer: the escapes of 0x00 and 0x2A bytes are not
//! counted) and the compressed bytes of a rule set over 511 characters. Only compression
//! is ported: a compressed set is kept as its text (decompression gives it back).
//!
//! Bytes are read unsigned (`char` of the ESP32-C3's RISC-V ABI): only text outside
//! ASCII depends on that.

use alloc::vec::Vec;

/// `cl_95[]`: the code (upper 12 bits) and its length (low nibble) of the 95 printable
/// characters, as patched for Tasmota (length 13 stored shifted left one bit).
const CL_95: [u16; 95] = [
    0x4000 + 3,
    0x3F80 + 11,
    0x3D80 + 11,
    0x3C80 + 10,
    0x3BE0 + 12,
    0x3E80 + 10,
    0x3F40 + 11,
    0x3EC0 + 10,
    0x3BA0 + 11,
    0x3BC0 + 11,
    0x3D60 + 11,
    0x3B60 + 11,
    0x3A80 + 10,
    0x3AC0 + 10,
    0x3A00 + 9,
    0x3B00 + 10,
    0x38C0 + 10,
    0x3900 + 10,
    0x3940 + 11,
    0x3960 + 11,
    0x3980 + 11,
    0x39A0 + 11,
    0x39C0 + 11,
    0x39E0 + 12,
    0x39F0 + 12,
    0x3880 + 10,
    0x3CC0 + 10,
    0x3C00 + 9,
    0x3D00 + 10,
    0x3E00 + 9,
    0x3F00 + 10,
    0x3B40 + 11,
    0x3BF0 + 12,
    0x2B00 + 8,
    0x21C0 + 11,
    0x20C0 + 10,
    0x2100 + 10,
    0x2600 + 7,
    0x2300 + 11,
    0x21E0 + 12,
    0x2140 + 11,
    0x2D00 + 8,
    0x46B0 + 13,
    0x2340 + 12,
    0x2080 + 10,
    0x21A0 + 11,
    0x2E00 + 8,
    0x2C00 + 8,
    0x2180 + 11,
    0x46A0 + 13,
    0x2F80 + 9,
    0x2F00 + 9,
    0x2A00 + 8,
    0x2160 + 11,
    0x2330 + 12,
    0x21F0 + 12,
    0x46C0 + 13,
    0x2320 + 12,
    0x46D0 + 13,
    0x3DE0 + 12,
    0x3FA0 + 11,
    0x3DF0 + 12,
    0x3D40 + 11,
    0x3F60 + 11,
    0x3FF0 + 12,
    0xB000 + 4,
    0x1C00 + 7,
    0x0C00 + 6,
    0x1000 + 6,
    0x6000 + 3,
    0x3000 + 7,
    0x1E00 + 8,
    0x1400 + 7,
    0xD000 + 4,
    0x3580 + 9,
    0x3400 + 8,
    0x0800 + 6,
    0x1A00 + 7,
    0xE000 + 4,
    0xC000 + 4,
    0x1800 + 7,
    0x3500 + 9,
    0xF800 + 5,
    0xF000 + 5,
    0xA000 + 4,
    0x1600 + 7,
    0x3300 + 8,
    0x1F00 + 8,
    0x3600 + 9,
    0x3200 + 8,
    0x3680 + 9,
    0x3DA0 + 11,
    0x3FC0 + 11,
    0x3DC0 + 11,
    0x3FE0 + 12,
];

const ESCAPE_MARKER: u8 = 0x2A;
const TERM_CODE: u32 = 0x37C0;
const DICT_CODE: u32 = 0x0000;
const DICT_CODE_LEN: u32 = 5;
const RPT_CODE_TASMOTA: u32 = 0x3780;
const RPT_CODE_TASMOTA_LEN: u32 = 10;
const BACK2_STATE1_CODE: u32 = 0x2000;
const BACK2_STATE1_CODE_LEN: u32 = 4;
const LF_CODE: u32 = 0x3700;
const LF_CODE_LEN: u32 = 9;
const TAB_CODE: u32 = 0x2400;
const TAB_CODE_LEN: u32 = 7;
const ALL_UPPER_CODE: u32 = 0x2200;
const ALL_UPPER_CODE_LEN: u32 = 8;
const SW2_STATE2_CODE: u32 = 0x3800;
const SW2_STATE2_CODE_LEN: u32 = 7;
const ST2_SPC_CODE: u32 = 0x3B80;
const ST2_SPC_CODE_LEN: u32 = 11;
const BIN_CODE_TASMOTA: u32 = 0x8000;
const BIN_CODE_TASMOTA_LEN: u32 = 3;
const NICE_LEN: usize = 5;

/// `codes[]` and `bit_len[]` of `encodeCount`.
const COUNT_CODES: [u8; 5] = [0x82, 0xC3, 0xE5, 0xED, 0xF5];
const COUNT_BITS: [u8; 5] = [5, 7, 9, 12, 16];

/// `SHX_STATE_1` (`false`) / `SHX_STATE_2` (`true`: sticky Set2, the digits).
struct Encoder<'a> {
    input: &'a [u8],
    /// `out`: `None` is the dry run.
    out: Option<Vec<u8>>,
    /// `ol`: bits written.
    ol: usize,
    state2: bool,
    all_upper: bool,
}

impl Encoder<'_> {
    /// `append_bits`.
    fn append_bits(&mut self, code: u32, clen: u32) {
        let (mut code, mut clen) = (code, clen as i32);
        if self.state2 && (code >> 9) == 0x1C {
            // Remove the change-state prefix.
            code <<= 7;
            clen -= 7;
        }
        while clen > 0 {
            let cur_bit = (self.ol % 8) as u32;
            let mut blen = clen.min(8) as u32;
            let mask = (0xFF00u32 >> blen) as u8;
            let a_byte = (((code >> 8) as u8) & mask) >> cur_bit;
            if blen + cur_bit > 8 {
                blen = 8 - cur_bit;
            }
            let at = self.ol >> 3;
            if let Some(out) = self.out.as_mut() {
                if out.len() <= at {
                    out.resize(at + 1, 0);
                }
                if cur_bit == 0 {
                    out[at] = a_byte;
                } else {
                    out[at] |= a_byte;
                }
            }
            code <<= blen;
            self.ol += blen as usize;
            if let Some(out) = self.out.as_mut().filter(|_| self.ol.is_multiple_of(8)) {
                // A full byte: a 0x00 or the marker itself is escaped.
                let last = out[self.ol / 8 - 1];
                if last == 0 || last == ESCAPE_MARKER {
                    let next = self.ol >> 3;
                    if out.len() <= next {
                        out.resize(next + 1, 0);
                    }
                    out[next] = last + 1;
                    out[next - 1] = ESCAPE_MARKER;
                    self.ol += 8;
                }
            }
            clen -= blen as i32;
        }
    }

    /// `encodeCount`.
    fn encode_count(&mut self, count: u32) {
        let mut till = 0u32;
        let mut base = 0u32;
        for (code, bits) in COUNT_CODES.into_iter().zip(COUNT_BITS) {
            till += 1 << bits;
            if count < till {
                self.append_bits(u32::from(code & 0xF8) << 8, u32::from(code & 0x07));
                self.append_bits((count - base) << (16 - u32::from(bits)), u32::from(bits));
                return;
            }
            base = till;
        }
    }

    /// `matchOccurance`: the longest earlier copy (at least six bytes) of what starts at
    /// `l`, the nearest of equals; returns the new `l`.
    fn match_occurance(&mut self, l: usize) -> Option<usize> {
        let input = self.input;
        let len = input.len();
        let (mut longest_dist, mut longest_len) = (0usize, 0usize);
        let mut j = l as isize - NICE_LEN as isize;
        while j >= 0 {
            let ju = j as usize;
            let mut k = l;
            while k < len && ju + k - l < l {
                if input[k] != input[ju + k - l] {
                    break;
                }
                k += 1;
            }
            if k - l > NICE_LEN - 1 {
                let match_len = k - l - NICE_LEN;
                let match_dist = l - ju - NICE_LEN + 1;
                if match_len > longest_len {
                    longest_len = match_len;
                    longest_dist = match_dist;
                }
            }
            j -= 1;
        }
        if longest_len == 0 {
            return None;
        }
        if self.state2 || self.all_upper {
            self.all_upper = false;
            self.state2 = false;
            self.append_bits(BACK2_STATE1_CODE, BACK2_STATE1_CODE_LEN);
        }
        self.append_bits(DICT_CODE, DICT_CODE_LEN);
        self.encode_count(longest_len as u32);
        self.encode_count(longest_dist as u32);
        Some(l + longest_len + NICE_LEN - 1)
    }
}

/// `Unishox::unishox_compress(in, len, out, len_out)`: the compressed size in bytes, or
/// `None` (the firmware's -1) once the output reaches `len_out - 4` bytes; with `out`
/// the bytes are written there.
pub fn compress(input: &[u8], out: Option<&mut Vec<u8>>, len_out: usize) -> Option<usize> {
    let len = input.len();
    let mut e = Encoder { input, out: out.as_ref().map(|_| Vec::new()), ol: 0, state2: false, all_upper: false };
    let at = |i: usize| input.get(i).copied().unwrap_or(0);
    let mut l = 0usize;
    while l < len {
        let c_in = input[l];
        // `l < len - 4` with `len` a size_t: always true for len < 4 (the reads past the
        // end meet the NUL, which never equals a character of the text).
        if l > 0 && (len < 4 || l < len - 4) {
            let repeat = c_in == at(l - 1) && c_in == at(l + 1) && c_in == at(l + 2) && c_in == at(l + 3);
            if repeat && c_in != 0 {
                let mut rpt_count = l + 4;
                while rpt_count < len && input[rpt_count] == c_in {
                    rpt_count += 1;
                }
                rpt_count -= l;
                if e.state2 || e.all_upper {
                    e.all_upper = false;
                    e.state2 = false;
                    e.append_bits(BACK2_STATE1_CODE, BACK2_STATE1_CODE_LEN);
                }
                e.append_bits(RPT_CODE_TASMOTA, RPT_CODE_TASMOTA_LEN);
                e.encode_count((rpt_count - 4) as u32);
                l += rpt_count;
                continue;
            }
        }
        if len < NICE_LEN - 1 || l + NICE_LEN - 1 < len {
            if let Some(next) = e.match_occurance(l) {
                l = next + 1;
                continue;
            }
        }
        if e.state2 && !matches!(c_in, b' '..=b'@' | b'['..=b'`' | b'{'..=b'~') {
            e.state2 = false;
            e.append_bits(BACK2_STATE1_CODE, BACK2_STATE1_CODE_LEN);
        }
        let is_upper = c_in.is_ascii_uppercase();
        if !is_upper && e.all_upper {
            e.all_upper = false;
            e.append_bits(BACK2_STATE1_CODE, BACK2_STATE1_CODE_LEN);
        }
        if (32..=126).contains(&c_in) {
            if is_upper && !e.all_upper {
                // CapsLock when this and the next five (those there are) are upper case.
                let mut ll = l as isize + 5;
                while ll >= l as isize && (ll as usize) < len {
                    if !input[ll as usize].is_ascii_uppercase() {
                        break;
                    }
                    ll -= 1;
                }
                if ll == l as isize - 1 {
                    e.append_bits(ALL_UPPER_CODE, ALL_UPPER_CODE_LEN);
                    e.all_upper = true;
                }
            }
            if !e.state2 && c_in.is_ascii_digit() {
                e.append_bits(SW2_STATE2_CODE, SW2_STATE2_CODE_LEN);
                e.state2 = true;
            }
            let mut c = c_in - 32;
            if e.all_upper && is_upper {
                c += 32;
            }
            if c == 0 && e.state2 {
                e.append_bits(ST2_SPC_CODE, ST2_SPC_CODE_LEN);
            } else {
                let cl = CL_95[usize::from(c)];
                let mut code = u32::from(cl & 0xFFF0);
                let clen = u32::from(cl & 0x000F);
                if clen == 13 {
                    code >>= 1;
                }
                e.append_bits(code, clen);
            }
        } else if c_in == 10 {
            e.append_bits(LF_CODE, LF_CODE_LEN);
        } else if c_in == b'\t' {
            e.append_bits(TAB_CODE, TAB_CODE_LEN);
        } else {
            e.append_bits(BIN_CODE_TASMOTA, BIN_CODE_TASMOTA_LEN);
            e.encode_count(u32::from(255 - c_in));
        }
        if e.ol / 8 >= len_out.saturating_sub(4) {
            return None;
        }
        l += 1;
    }
    let bits = e.ol % 8;
    if bits > 0 {
        e.state2 = false;
        e.append_bits(TERM_CODE, 8 - bits as u32);
    }
    if let (Some(dst), Some(mut bytes)) = (out, e.out) {
        bytes.truncate(e.ol / 8);
        *dst = bytes;
    }
    Some(e.ol / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_tiny() {
        assert_eq!(compress(b"", None, 520), Some(0));
        // 'a': 4 bits, padded with TERM to one byte.
        assert_eq!(compress(b"a", None, 520), Some(1));
    }

    /// Ground truth from the C++ source compiled on the host (see the file's header).
    #[test]
    fn same_bytes_as_the_cpp_source() {
        let cases = include_bytes!("../../../fixtures/vectors/unishox.cases");
        let mut n = 0;
        for line in cases.split(|&b| b == b'\n').filter(|l| !l.is_empty() && l[0] != b'#') {
            let tab = line.iter().position(|&b| b == b'\t').expect("tab");
            let expected = core::str::from_utf8(&line[..tab]).expect("ascii");
            let mut input = Vec::new();
            let mut i = tab + 1;
            while i < line.len() {
                if line[i] == b'\\' && line.get(i + 1) == Some(&b'n') {
                    input.push(b'\n');
                    i += 2;
                } else {
                    input.push(line[i]);
                    i += 1;
                }
            }
            let mut parts = expected.split(' ');
            let dry: i32 = parts.next().and_then(|p| p.parse().ok()).expect("dry");
            let real: i32 = parts.next().and_then(|p| p.parse().ok()).expect("real");
            let hex = parts.next().unwrap_or("");
            let got_dry = compress(&input, None, 520).map_or(-1, |n| n as i32);
            assert_eq!(got_dry, dry, "dry run of {:?}", alloc::string::String::from_utf8_lossy(&input));
            let mut out = Vec::new();
            let got_real = compress(&input, Some(&mut out), 520).map_or(-1, |n| n as i32);
            assert_eq!(got_real, real, "size of {:?}", alloc::string::String::from_utf8_lossy(&input));
            if real >= 0 {
                let got_hex: alloc::string::String = out.iter().map(|b| alloc::format!("{b:02x}")).collect();
                assert_eq!(got_hex, hex, "bytes of {:?}", alloc::string::String::from_utf8_lossy(&input));
            }
            n += 1;
        }
        assert_eq!(n, 258);
    }
}
