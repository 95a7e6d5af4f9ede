//! MD5 of several independent messages at once.
//!
//! One MD5 is a chain: every step waits for the one before, so a single stream runs at the
//! latency of that chain whatever the CPU's width. Separate messages have separate chains. On
//! x86-64 with AVX2 this runs eight of them side by side, one message in each 32-bit lane of
//! the vector registers, and with AVX-512 sixteen, where one instruction also computes each
//! step's boolean function (`vpternlogd`) and one its rotate (`vprold`): one pass of the block
//! function costs about what one scalar block costs, for up to eight or sixteen blocks. A lane
//! whose message ends takes the next waiting message, so messages of different lengths keep
//! the lanes busy. Without AVX2, or for one message, each message goes through the scalar
//! function.

use super::Md5;

/// Messages hashed side by side with AVX2 (AVX-512 takes twice as many).
pub const LANES: usize = 8;

/// Whether this CPU hashes messages side by side.
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU hashes sixteen messages side by side.
#[cfg(target_arch = "x86_64")]
fn wider() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The MD5 of each message, in order.
pub fn digest_many(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    if messages.len() > 1 {
        if wider() {
            // SAFETY: AVX-512F is present (checked just above).
            return unsafe { drive::<{ avx512::LANES }>(messages, avx512::compress) };
        }
        if wide() {
            // SAFETY: AVX2 is present (checked just above).
            return unsafe { drive::<LANES>(messages, avx2::compress) };
        }
    }
    messages.iter().map(|m| Md5::digest(m)).collect()
}

/// Lane states, word by word (`state[w][lane]`), and one block of each lane:
/// `blocks[lane]` points at 64 readable bytes.
#[cfg(target_arch = "x86_64")]
type Compress<const N: usize> = unsafe fn(&mut [[u32; N]; 4], &[*const u8; N]);

/// A message in a lane: which one, and its next block.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Slot {
    message: usize,
    next: usize,
}

/// Feeds the messages through `N` lanes of `compress`, refilling a lane when its message ends.
///
/// # Safety
/// The CPU must support the instructions `compress` is built for.
#[cfg(target_arch = "x86_64")]
unsafe fn drive<const N: usize>(messages: &[&[u8]], compress: Compress<N>) -> Vec<[u8; 16]> {
    use super::{output, Tail, INIT};
    let full: Vec<usize> = messages.iter().map(|m| m.len() / 64).collect();
    let tails: Vec<Tail> = messages
        .iter()
        .zip(&full)
        .map(|(m, &f)| Tail::new(&m[f * 64..], m.len() as u64))
        .collect();
    let total = |i: usize| full[i] + tails[i].count;
    let mut out = vec![[0u8; 16]; messages.len()];
    let idle = [0u8; 64];
    let mut state = [[0u32; N]; 4];
    let mut slots: [Option<Slot>; N] = [None; N];
    let mut waiting = 0..messages.len();
    loop {
        for (lane, slot) in slots.iter_mut().enumerate() {
            if slot.is_none() {
                if let Some(message) = waiting.next() {
                    *slot = Some(Slot { message, next: 0 });
                    for (w, init) in state.iter_mut().zip(INIT) {
                        w[lane] = init;
                    }
                }
            }
        }
        // Blocks every busy lane still has.
        let Some(run) = slots
            .iter()
            .flatten()
            .map(|s| total(s.message) - s.next)
            .min()
        else {
            break;
        };
        for _ in 0..run {
            let mut blocks = [idle.as_ptr(); N];
            for (p, slot) in blocks.iter_mut().zip(slots.iter_mut()) {
                if let Some(s) = slot {
                    let i = s.message;
                    *p = if s.next < full[i] {
                        messages[i].as_ptr().add(s.next * 64)
                    } else {
                        tails[i].bytes.as_ptr().add((s.next - full[i]) * 64)
                    };
                    s.next += 1;
                }
            }
            compress(&mut state, &blocks);
        }
        for (lane, slot) in slots.iter_mut().enumerate() {
            if let Some(s) = *slot {
                if s.next == total(s.message) {
                    out[s.message] = output(state.map(|w| w[lane]));
                    *slot = None;
                }
            }
        }
    }
    out
}

/// The 64 steps of the block function over vectors `$a`..`$d` and message words `$w`:
/// `$step!(function, a, b, c, d, word, constant, shift)` for each, in order, with the
/// registers rotating through the places of `a`, `b`, `c`, `d`.
#[cfg(target_arch = "x86_64")]
macro_rules! block_steps {
    ($step:ident, @four $f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident,
         [$s0:literal, $s1:literal, $s2:literal, $s3:literal],
         $x0:literal $k0:literal, $x1:literal $k1:literal, $x2:literal $k2:literal,
         $x3:literal $k3:literal) => {
            $step!($f, $a, $b, $c, $d, $w[$x0], $k0, $s0);
            $step!($f, $d, $a, $b, $c, $w[$x1], $k1, $s1);
            $step!($f, $c, $d, $a, $b, $w[$x2], $k2, $s2);
            $step!($f, $b, $c, $d, $a, $w[$x3], $k3, $s3);
    };
    ($step:ident, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident) => {
        block_steps!($step, @four f, $a, $b, $c, $d, $w, [7, 12, 17, 22], 0 0xd76aa478, 1 0xe8c7b756, 2 0x242070db, 3 0xc1bdceee);
        block_steps!($step, @four f, $a, $b, $c, $d, $w, [7, 12, 17, 22], 4 0xf57c0faf, 5 0x4787c62a, 6 0xa8304613, 7 0xfd469501);
        block_steps!($step, @four f, $a, $b, $c, $d, $w, [7, 12, 17, 22], 8 0x698098d8, 9 0x8b44f7af, 10 0xffff5bb1, 11 0x895cd7be);
        block_steps!($step, @four f, $a, $b, $c, $d, $w, [7, 12, 17, 22], 12 0x6b901122, 13 0xfd987193, 14 0xa679438e, 15 0x49b40821);
        block_steps!($step, @four g, $a, $b, $c, $d, $w, [5, 9, 14, 20], 1 0xf61e2562, 6 0xc040b340, 11 0x265e5a51, 0 0xe9b6c7aa);
        block_steps!($step, @four g, $a, $b, $c, $d, $w, [5, 9, 14, 20], 5 0xd62f105d, 10 0x02441453, 15 0xd8a1e681, 4 0xe7d3fbc8);
        block_steps!($step, @four g, $a, $b, $c, $d, $w, [5, 9, 14, 20], 9 0x21e1cde6, 14 0xc33707d6, 3 0xf4d50d87, 8 0x455a14ed);
        block_steps!($step, @four g, $a, $b, $c, $d, $w, [5, 9, 14, 20], 13 0xa9e3e905, 2 0xfcefa3f8, 7 0x676f02d9, 12 0x8d2a4c8a);
        block_steps!($step, @four h, $a, $b, $c, $d, $w, [4, 11, 16, 23], 5 0xfffa3942, 8 0x8771f681, 11 0x6d9d6122, 14 0xfde5380c);
        block_steps!($step, @four h, $a, $b, $c, $d, $w, [4, 11, 16, 23], 1 0xa4beea44, 4 0x4bdecfa9, 7 0xf6bb4b60, 10 0xbebfbc70);
        block_steps!($step, @four h, $a, $b, $c, $d, $w, [4, 11, 16, 23], 13 0x289b7ec6, 0 0xeaa127fa, 3 0xd4ef3085, 6 0x04881d05);
        block_steps!($step, @four h, $a, $b, $c, $d, $w, [4, 11, 16, 23], 9 0xd9d4d039, 12 0xe6db99e5, 15 0x1fa27cf8, 2 0xc4ac5665);
        block_steps!($step, @four i, $a, $b, $c, $d, $w, [6, 10, 15, 21], 0 0xf4292244, 7 0x432aff97, 14 0xab9423a7, 5 0xfc93a039);
        block_steps!($step, @four i, $a, $b, $c, $d, $w, [6, 10, 15, 21], 12 0x655b59c3, 3 0x8f0ccc92, 10 0xffeff47d, 1 0x85845dd1);
        block_steps!($step, @four i, $a, $b, $c, $d, $w, [6, 10, 15, 21], 8 0x6fa87e4f, 15 0xfe2ce6e0, 6 0xa3014314, 13 0x4e0811a1);
        block_steps!($step, @four i, $a, $b, $c, $d, $w, [6, 10, 15, 21], 4 0xf7537e82, 11 0xbd3af235, 2 0x2ad7d2bb, 9 0xeb86d391);
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// Words 0..8 or 8..16 of the eight blocks, transposed: `out[j]` holds word `j` of every
    /// lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256(u0, u4, 0x20),
            _mm256_permute2x128_si256(u1, u5, 0x20),
            _mm256_permute2x128_si256(u2, u6, 0x20),
            _mm256_permute2x128_si256(u3, u7, 0x20),
            _mm256_permute2x128_si256(u0, u4, 0x31),
            _mm256_permute2x128_si256(u1, u5, 0x31),
            _mm256_permute2x128_si256(u2, u6, 0x31),
            _mm256_permute2x128_si256(u3, u7, 0x31),
        ]
    }

    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }

    #[inline(always)]
    unsafe fn f(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
    }

    /// `(b & d) | (c & !d)` as the sum of its two disjoint terms.
    #[inline(always)]
    unsafe fn g(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        add(_mm256_andnot_si256(d, c), _mm256_and_si256(b, d))
    }

    #[inline(always)]
    unsafe fn h(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        _mm256_xor_si256(_mm256_xor_si256(b, c), d)
    }

    #[inline(always)]
    unsafe fn i(b: __m256i, c: __m256i, d: __m256i) -> __m256i {
        let not_d = _mm256_xor_si256(d, _mm256_set1_epi32(-1));
        _mm256_xor_si256(c, _mm256_or_si256(b, not_d))
    }

    // `a = b + rotl(a + x + k + f(b, c, d), s)`, the terms that do not wait for `b` first.
    macro_rules! step {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $k:literal, $s:literal) => {
            $a = add($a, add($x, _mm256_set1_epi32($k as u32 as i32)));
            $a = add($a, $f($b, $c, $d));
            $a = _mm256_or_si256(
                _mm256_slli_epi32::<$s>($a),
                _mm256_srli_epi32::<{ 32 - $s }>($a),
            );
            $a = add($a, $b);
        };
    }

    /// One block of each lane (see [`super::Compress`]).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn compress(words: &mut [[u32; LANES]; 4], blocks: &[*const u8; LANES]) {
        let state = words.map(|w| _mm256_loadu_si256(w.as_ptr().cast()));
        let mut lo = [_mm256_setzero_si256(); LANES];
        let mut hi = [_mm256_setzero_si256(); LANES];
        for lane in 0..LANES {
            lo[lane] = _mm256_loadu_si256(blocks[lane].cast());
            hi[lane] = _mm256_loadu_si256(blocks[lane].add(32).cast());
        }
        let (lo, hi) = (transpose(lo), transpose(hi));
        let w = [
            lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
            hi[4], hi[5], hi[6], hi[7],
        ];
        let [mut a, mut b, mut c, mut d] = state;
        block_steps!(step, a, b, c, d, w);
        for ((word, now), before) in words.iter_mut().zip([a, b, c, d]).zip(state) {
            _mm256_storeu_si256(word.as_mut_ptr().cast(), add(before, now));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Messages hashed side by side.
    pub const LANES: usize = 2 * super::LANES;

    /// The sixteen blocks, transposed: `out[j]` holds word `j` of every lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(r: [__m512i; LANES]) -> [__m512i; LANES] {
        // Pairs of rows interleaved by word, then by two words: in each 128-bit quarter `q`,
        // `u[4m + k]` holds word `4q + k` of rows `4m..4m + 4`.
        let mut t = [_mm512_setzero_si512(); LANES];
        for m in 0..LANES / 2 {
            t[2 * m] = _mm512_unpacklo_epi32(r[2 * m], r[2 * m + 1]);
            t[2 * m + 1] = _mm512_unpackhi_epi32(r[2 * m], r[2 * m + 1]);
        }
        let mut u = [_mm512_setzero_si512(); LANES];
        for m in 0..LANES / 4 {
            let (lo, hi) = (t[4 * m], t[4 * m + 1]);
            let (lo2, hi2) = (t[4 * m + 2], t[4 * m + 3]);
            u[4 * m] = _mm512_unpacklo_epi64(lo, lo2);
            u[4 * m + 1] = _mm512_unpackhi_epi64(lo, lo2);
            u[4 * m + 2] = _mm512_unpacklo_epi64(hi, hi2);
            u[4 * m + 3] = _mm512_unpackhi_epi64(hi, hi2);
        }
        // Quarters gathered: first the even and odd quarters of rows 0..8 and 8..16, then the
        // four row groups of one word side by side.
        let mut v = [_mm512_setzero_si512(); LANES];
        for k in 0..4 {
            v[k] = _mm512_shuffle_i32x4::<0x88>(u[k], u[4 + k]);
            v[4 + k] = _mm512_shuffle_i32x4::<0xdd>(u[k], u[4 + k]);
            v[8 + k] = _mm512_shuffle_i32x4::<0x88>(u[8 + k], u[12 + k]);
            v[12 + k] = _mm512_shuffle_i32x4::<0xdd>(u[8 + k], u[12 + k]);
        }
        let mut out = [_mm512_setzero_si512(); LANES];
        for k in 0..8 {
            out[k] = _mm512_shuffle_i32x4::<0x88>(v[k], v[8 + k]);
            out[8 + k] = _mm512_shuffle_i32x4::<0xdd>(v[k], v[8 + k]);
        }
        out
    }

    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }

    // The four boolean functions of `b`, `c`, `d`, each one `vpternlogd` whose immediate is
    // the function's truth table (bit `4b + 2c + d`).
    #[inline(always)]
    unsafe fn f(b: __m512i, c: __m512i, d: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0xca>(b, c, d)
    }

    #[inline(always)]
    unsafe fn g(b: __m512i, c: __m512i, d: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0xe4>(b, c, d)
    }

    #[inline(always)]
    unsafe fn h(b: __m512i, c: __m512i, d: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(b, c, d)
    }

    #[inline(always)]
    unsafe fn i(b: __m512i, c: __m512i, d: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x39>(b, c, d)
    }

    // `a = b + rotl(a + x + k + f(b, c, d), s)`, the terms that do not wait for `b` first.
    macro_rules! step {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $k:literal, $s:literal) => {
            $a = add($a, add($x, _mm512_set1_epi32($k as u32 as i32)));
            $a = add($a, $f($b, $c, $d));
            $a = _mm512_rol_epi32::<$s>($a);
            $a = add($a, $b);
        };
    }

    /// One block of each lane (see [`super::Compress`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn compress(words: &mut [[u32; LANES]; 4], blocks: &[*const u8; LANES]) {
        let state = words.map(|w| _mm512_loadu_si512(w.as_ptr().cast()));
        let mut rows = [_mm512_setzero_si512(); LANES];
        for (row, block) in rows.iter_mut().zip(blocks) {
            *row = _mm512_loadu_si512(block.cast());
        }
        let w = transpose(rows);
        let [mut a, mut b, mut c, mut d] = state;
        block_steps!(step, a, b, c, d, w);
        for ((word, now), before) in words.iter_mut().zip([a, b, c, d]).zip(state) {
            _mm512_storeu_si512(word.as_mut_ptr().cast(), add(before, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::noise;
    use super::*;

    type Engine = Box<dyn Fn(&[&[u8]]) -> Vec<[u8; 16]>>;

    /// Each side-by-side engine this CPU has, by name, as a function of the messages.
    fn engines() -> Vec<(&'static str, Engine)> {
        let mut out: Vec<(&'static str, Engine)> = vec![("chosen", Box::new(digest_many))];
        #[cfg(target_arch = "x86_64")]
        {
            if wide() {
                // SAFETY: AVX2 is present.
                out.push((
                    "avx2",
                    Box::new(|m| unsafe { drive::<LANES>(m, avx2::compress) }),
                ));
            }
            if wider() {
                // SAFETY: AVX-512F is present.
                out.push((
                    "avx512",
                    Box::new(|m| unsafe { drive::<{ avx512::LANES }>(m, avx512::compress) }),
                ));
            }
        }
        out
    }

    /// Every count of messages up to three of the widest engine's lanes' worth, of lengths
    /// around the padding boundaries and longer, in mixed order: each digest is the scalar one
    /// of its message, on every engine.
    #[test]
    fn agrees_with_one_at_a_time() {
        let data = noise(300_000, 3);
        let lengths: Vec<usize> = (0..140)
            .chain([1000, 4095, 4096, 4097, 10_000, 65_536, 200_000, 299_999])
            .collect();
        for (engine, digest) in engines() {
            for count in 1..=3 * 2 * LANES + 1 {
                let messages: Vec<&[u8]> = (0..count)
                    .map(|k| {
                        let len = lengths[(k * 37 + count * 11) % lengths.len()];
                        let start = (k * 131) % (data.len() - len + 1);
                        &data[start..start + len]
                    })
                    .collect();
                let got = digest(&messages);
                assert_eq!(got.len(), count);
                for (m, d) in messages.iter().zip(&got) {
                    assert_eq!(
                        *d,
                        Md5::digest(m),
                        "{engine}: {count} messages, one of {} bytes",
                        m.len()
                    );
                }
            }
        }
    }

    #[test]
    fn known_digests_side_by_side() {
        let messages: [&[u8]; 3] = [b"", b"abc", b"message digest"];
        for (engine, digest) in engines() {
            let got: Vec<String> = digest(&messages).into_iter().map(hex::encode).collect();
            assert_eq!(
                got,
                [
                    "d41d8cd98f00b204e9800998ecf8427e",
                    "900150983cd24fb0d6963f7d28e17f72",
                    "f96b697d7cb7938d525a2f31aaf161d0",
                ],
                "{engine}"
            );
        }
    }
}
