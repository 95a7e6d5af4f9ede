//! Small, well-formed sample files built in code, for tests (PNG, GIF, BMP, MP4/MOV, WebM).

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn png_chunk(out: &mut Vec<u8>, typ: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let mut c = typ.to_vec();
    c.extend_from_slice(body);
    out.extend_from_slice(&c);
    out.extend_from_slice(&crc32(&c).to_be_bytes());
}

/// A valid RGB PNG of `w`×`h` pixels (a colour gradient), stored without compression.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        for x in 0..w {
            raw.extend_from_slice(&[(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &z);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A GIF of `w`×`h` with `frames` image descriptors (each a 1-pixel image at the origin).
pub fn gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF]);
    for _ in 0..frames {
        out.extend_from_slice(&[0x21, 0xF9, 4, 0, 10, 0, 0, 0]);
        out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        out.extend_from_slice(&[2, 2, 0x44, 0x01, 0]);
    }
    out.push(0x3B);
    out
}

/// A 24-bit BMP of `w`×`h`.
pub fn bmp(w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0]);
    out.extend_from_slice(&w.to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&[1, 0, 24, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&(row * h).to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out.resize(size as usize, 0x7F);
    out
}

fn mp4_box(typ: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(typ);
    out.extend_from_slice(body);
    out
}

/// An ISO-BMFF file (brand `isom` → MP4, `qt  ` → MOV) with one H.264 video track of
/// `w`×`h` and `seconds` duration (30 fps), followed by placeholder media data.
pub fn mp4(w: u32, h: u32, seconds: f64, brand: &[u8; 4]) -> Vec<u8> {
    let timescale = 1000u32;
    let duration = (seconds * timescale as f64).round() as u32;
    let frames = (seconds * 30.0).round() as u32;
    let mut ftyp = brand.to_vec();
    ftyp.extend_from_slice(&[0, 0, 2, 0]);
    ftyp.extend_from_slice(brand);
    ftyp.extend_from_slice(b"mp41");
    let mut mvhd = vec![0u8; 100];
    mvhd[12..16].copy_from_slice(&timescale.to_be_bytes());
    mvhd[16..20].copy_from_slice(&duration.to_be_bytes());
    let mut tkhd = vec![0u8; 84];
    tkhd[3] = 3;
    tkhd[24..28].copy_from_slice(&duration.to_be_bytes());
    let identity: [u32; 9] = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000];
    for (i, v) in identity.iter().enumerate() {
        tkhd[40 + 4 * i..44 + 4 * i].copy_from_slice(&v.to_be_bytes());
    }
    tkhd[76..80].copy_from_slice(&(w << 16).to_be_bytes());
    tkhd[80..84].copy_from_slice(&(h << 16).to_be_bytes());
    let mut mdhd = vec![0u8; 24];
    mdhd[12..16].copy_from_slice(&timescale.to_be_bytes());
    mdhd[16..20].copy_from_slice(&duration.to_be_bytes());
    let mut hdlr = vec![0u8; 25];
    hdlr[8..12].copy_from_slice(b"vide");
    let mut entry = vec![0u8; 86];
    entry[0..4].copy_from_slice(&86u32.to_be_bytes());
    entry[4..8].copy_from_slice(b"avc1");
    entry[32..34].copy_from_slice(&(w as u16).to_be_bytes());
    entry[34..36].copy_from_slice(&(h as u16).to_be_bytes());
    let mut stsd = vec![0, 0, 0, 0, 0, 0, 0, 1];
    stsd.extend_from_slice(&entry);
    let mut stsz = vec![0u8; 12];
    stsz[8..12].copy_from_slice(&frames.to_be_bytes());
    let stbl = mp4_box(
        b"stbl",
        &[mp4_box(b"stsd", &stsd), mp4_box(b"stsz", &stsz)].concat(),
    );
    let minf = mp4_box(b"minf", &stbl);
    let mdia = mp4_box(
        b"mdia",
        &[mp4_box(b"mdhd", &mdhd), mp4_box(b"hdlr", &hdlr), minf].concat(),
    );
    let trak = mp4_box(b"trak", &[mp4_box(b"tkhd", &tkhd), mdia].concat());
    let moov = mp4_box(b"moov", &[mp4_box(b"mvhd", &mvhd), trak].concat());
    [mp4_box(b"ftyp", &ftyp), mp4_box(b"mdat", &[0u8; 256]), moov].concat()
}

fn ebml(id: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    let len = body.len() as u64;
    out.push(0x01);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

/// A WebM file with one VP9 video track of `w`×`h` and `seconds` duration.
pub fn webm(w: u16, h: u16, seconds: f64) -> Vec<u8> {
    let header = ebml(&[0x1A, 0x45, 0xDF, 0xA3], &ebml(&[0x42, 0x82], b"webm"));
    let info = ebml(
        &[0x15, 0x49, 0xA9, 0x66],
        &[
            ebml(&[0x2A, 0xD7, 0xB1], &1_000_000u32.to_be_bytes()),
            ebml(&[0x44, 0x89], &(seconds * 1000.0).to_be_bytes()),
        ]
        .concat(),
    );
    let video = ebml(
        &[0xE0],
        &[
            ebml(&[0xB0], &w.to_be_bytes()),
            ebml(&[0xBA], &h.to_be_bytes()),
        ]
        .concat(),
    );
    let entry = ebml(
        &[0xAE],
        &[ebml(&[0x83], &[1]), ebml(&[0x86], b"V_VP9"), video].concat(),
    );
    let tracks = ebml(&[0x16, 0x54, 0xAE, 0x6B], &entry);
    let cluster = ebml(&[0x1F, 0x43, 0xB6, 0x75], &[0u8; 64]);
    let mut segment = vec![
        0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    segment.extend_from_slice(&[info, tracks, cluster].concat());
    [header, segment].concat()
}

/// A baseline JPEG header (SOI and SOF0) of `w`×`h`; enough for probing, not for decoding.
pub fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    out.extend_from_slice(b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00");
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// An extended WebP (VP8X) of `w`×`h` with `frames` animation frames (0: a still image).
pub fn webp(w: u32, h: u32, frames: usize) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut vp8x = vec![if frames > 0 { 0x02 } else { 0 }, 0, 0, 0];
    vp8x.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    let chunk = |typ: &[u8; 4], body: &[u8]| {
        let mut c = typ.to_vec();
        c.extend_from_slice(&(body.len() as u32).to_le_bytes());
        c.extend_from_slice(body);
        if body.len() % 2 == 1 {
            c.push(0);
        }
        c
    };
    chunks.extend(chunk(b"VP8X", &vp8x));
    for _ in 0..frames {
        chunks.extend(chunk(b"ANMF", &[0u8; 17]));
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((chunks.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend(chunks);
    out
}

/// A little-endian TIFF with `pages` image directories of `w`×`h`.
pub fn tiff(w: u16, h: u16, pages: usize) -> Vec<u8> {
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    for i in 0..pages {
        let ifd_len = 2 + 2 * 12 + 4;
        out.extend_from_slice(&2u16.to_le_bytes());
        for (tag, value) in [(256u16, w), (257u16, h)] {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&3u16.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(value as u32).to_le_bytes());
        }
        let next = if i + 1 < pages {
            (8 + (i + 1) * ifd_len) as u32
        } else {
            0
        };
        out.extend_from_slice(&next.to_le_bytes());
    }
    out
}

/// An ICO directory with one `size`×`size` PNG entry.
pub fn ico(size: u8) -> Vec<u8> {
    let image = png(size as u32, size as u32);
    let mut out = vec![0, 0, 1, 0, 1, 0, size, size, 0, 0, 1, 0, 32, 0];
    out.extend_from_slice(&(image.len() as u32).to_le_bytes());
    out.extend_from_slice(&22u32.to_le_bytes());
    out.extend(image);
    out
}
