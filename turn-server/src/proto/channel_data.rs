//! ChannelData (RFC 8656 §12.4): parsed and written without `stun` and without allocating, since
//! every relayed packet of a bound channel goes through here.

/// Channel numbers a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// RFC 5766 §11 allowed 0x4000 through 0x7FFF (its "16,383 possible values" is one short of that
/// range), coturn accepts 0x7FFF, and its clients pick numbers up to it.
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;
pub const HEADER_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub number: u16,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("not a ChannelData header")]
    TooShort,
    #[error("length field {0} runs past the datagram")]
    LengthPastEnd(u16),
}

pub fn is_channel_data(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b & 0xC0 == 0x40)
}

/// Parses one ChannelData message (first two bits 01: numbers 0x4000-0x7FFF; whether the number
/// is bound is the allocation's business). Trailing bytes (padding, optional over UDP) are ignored.
pub fn parse(buf: &[u8]) -> Result<ChannelData<'_>, ChannelDataError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(ChannelDataError::TooShort);
    };
    let number = u16::from_be_bytes([header[0], header[1]]);
    let len = u16::from_be_bytes([header[2], header[3]]);
    if number & 0xC000 != 0x4000 {
        return Err(ChannelDataError::TooShort);
    }
    let payload = buf
        .get(HEADER_LEN..HEADER_LEN + usize::from(len))
        .ok_or(ChannelDataError::LengthPastEnd(len))?;
    Ok(ChannelData { number, payload })
}

/// Writes the 4-byte header for a payload of `len` bytes.
pub fn header(number: u16, len: u16) -> [u8; HEADER_LEN] {
    let n = number.to_be_bytes();
    let l = len.to_be_bytes();
    [n[0], n[1], l[0], l[1]]
}

pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// The length of the STUN message or ChannelData frame that starts with these 4 bytes on a
/// stream transport (RFC 8656 §12.5: ChannelData is padded to 4 bytes over TCP/TLS).
/// `None` means the stream is not TURN and must be closed.
pub fn stream_frame_len(first4: [u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([first4[2], first4[3]]));
    match first4[0] & 0xC0 {
        0x00 => Some(20 + len),
        0x40 => Some(HEADER_LEN + padded(len)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_ignores_padding() {
        let buf = [0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0];
        let cd = parse(&buf).expect("valid");
        assert_eq!(cd.number, 0x4001);
        assert_eq!(cd.payload, &[1, 2, 3]);
    }

    #[test]
    fn rejects_bad_inputs() {
        assert_eq!(parse(&[0x40, 0x00]), Err(ChannelDataError::TooShort));
        assert_eq!(parse(&[0x80, 0x00, 0, 0]), Err(ChannelDataError::TooShort));
        assert_eq!(parse(&[0x70, 0x0d, 0, 0]).map(|c| c.number), Ok(0x700d));
        assert_eq!(
            parse(&[0x40, 0x00, 0, 5, 1]),
            Err(ChannelDataError::LengthPastEnd(5))
        );
    }

    #[test]
    fn stream_frames() {
        assert_eq!(stream_frame_len([0x00, 0x01, 0x00, 0x08]), Some(28));
        assert_eq!(stream_frame_len([0x40, 0x00, 0x00, 0x05]), Some(12));
        assert_eq!(stream_frame_len([0x80, 0, 0, 0]), None);
        assert_eq!(header(0x4001, 258), [0x40, 0x01, 0x01, 0x02]);
    }
}
