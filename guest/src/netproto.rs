//! Ethernet/ARP/IPv4/ICMP frames for the net check: building ARP requests and ICMP echo
//! requests, and turning received frames into events (ARP reply, echo reply) or answers
//! (ARP reply to a request for our address, echo reply to a ping of our address).
//! Pure functions over byte slices, unit-tested on the host.

/// Ethernet header length.
pub const ETH: usize = 14;
/// Shortest Ethernet frame (without FCS) the guest sends.
pub const MIN_FRAME: usize = 60;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Largest frame handled (without the virtio header).
pub const MAX_FRAME: usize = 1514;

/// Our addresses.
#[derive(Clone, Copy, Debug)]
pub struct Iface {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

/// What a received frame means to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An ARP reply: `ip` is at `mac`.
    ArpReply { ip: [u8; 4], mac: [u8; 6] },
    /// An ICMP echo reply from `from` with this id/sequence.
    EchoReply { from: [u8; 4], id: u16, seq: u16 },
    /// The frame was answered: the reply (of this length) is in the output buffer.
    Answered { len: usize, kind: Answer },
    /// Not for us / not understood.
    Ignored,
}

/// Kinds of frames the guest answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Arp,
    Echo,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(be16(c));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth_header(out: &mut [u8], dst: &[u8; 6], src: &[u8; 6], ty: u16) {
    out[0..6].copy_from_slice(dst);
    out[6..12].copy_from_slice(src);
    out[12..14].copy_from_slice(&ty.to_be_bytes());
}

fn arp(
    out: &mut [u8],
    op: u16,
    sha: &[u8; 6],
    spa: &[u8; 4],
    tha: &[u8; 6],
    tpa: &[u8; 4],
) -> usize {
    let a = &mut out[ETH..ETH + 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(sha);
    a[14..18].copy_from_slice(spa);
    a[18..24].copy_from_slice(tha);
    a[24..28].copy_from_slice(tpa);
    out[ETH + 28..MIN_FRAME].fill(0);
    MIN_FRAME
}

/// Writes a broadcast ARP request for `target` into `out` (at least 60 bytes); returns
/// the frame length.
pub fn arp_request(out: &mut [u8], me: &Iface, target: &[u8; 4]) -> usize {
    eth_header(out, &[0xff; 6], &me.mac, ETHERTYPE_ARP);
    arp(out, 1, &me.mac, &me.ip, &[0; 6], target)
}

/// Writes an IPv4 header (20 bytes, no options) at `out[ETH..]`.
fn ipv4_header(out: &mut [u8], src: &[u8; 4], dst: &[u8; 4], payload_len: usize, id: u16) {
    let h = &mut out[ETH..ETH + 20];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    h[8] = 64;
    h[9] = IP_ICMP;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(src);
    h[16..20].copy_from_slice(dst);
    let c = checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Writes an ICMP echo message (type 8 request or 0 reply) with `data` as payload;
/// returns the frame length. `out` must hold 14 + 20 + 8 + data.len() (and 60) bytes.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo(
    out: &mut [u8],
    ty: u8,
    me: &Iface,
    dst_mac: &[u8; 6],
    dst_ip: &[u8; 4],
    id: u16,
    seq: u16,
    data: &[u8],
) -> usize {
    eth_header(out, dst_mac, &me.mac, ETHERTYPE_IPV4);
    let icmp_len = 8 + data.len();
    ipv4_header(out, &me.ip, dst_ip, icmp_len, seq);
    let i = &mut out[ETH + 20..ETH + 20 + icmp_len];
    i[0] = ty;
    i[1] = 0;
    i[2..4].fill(0);
    i[4..6].copy_from_slice(&id.to_be_bytes());
    i[6..8].copy_from_slice(&seq.to_be_bytes());
    i[8..].copy_from_slice(data);
    let c = checksum(i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    let len = ETH + 20 + icmp_len;
    if len < MIN_FRAME {
        out[len..MIN_FRAME].fill(0);
        return MIN_FRAME;
    }
    len
}

/// Builds an echo request to `dst`.
pub fn echo_request(
    out: &mut [u8],
    me: &Iface,
    dst_mac: &[u8; 6],
    dst_ip: &[u8; 4],
    id: u16,
    seq: u16,
) -> usize {
    icmp_echo(
        out,
        ICMP_ECHO_REQUEST,
        me,
        dst_mac,
        dst_ip,
        id,
        seq,
        b"bulkhead-guest-ping",
    )
}

/// Interprets a received frame; answers ARP requests for our address and echo requests
/// to our address by writing the answer into `out` (at least `MAX_FRAME` bytes).
pub fn handle(frame: &[u8], me: &Iface, out: &mut [u8]) -> Event {
    if frame.len() < ETH {
        return Event::Ignored;
    }
    let dst: [u8; 6] = frame[0..6].try_into().unwrap_or([0; 6]);
    if dst != me.mac && dst != [0xff; 6] {
        return Event::Ignored;
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().unwrap_or([0; 6]);
    match be16(&frame[12..]) {
        ETHERTYPE_ARP => handle_arp(&frame[ETH..], me, out),
        ETHERTYPE_IPV4 => handle_ipv4(&frame[ETH..], &src_mac, me, out),
        _ => Event::Ignored,
    }
}

fn handle_arp(a: &[u8], me: &Iface, out: &mut [u8]) -> Event {
    if a.len() < 28 || be16(a) != 1 || be16(&a[2..]) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return Event::Ignored;
    }
    let sha: [u8; 6] = a[8..14].try_into().unwrap_or([0; 6]);
    let spa: [u8; 4] = a[14..18].try_into().unwrap_or([0; 4]);
    let tpa: [u8; 4] = a[24..28].try_into().unwrap_or([0; 4]);
    if tpa != me.ip {
        return Event::Ignored;
    }
    match be16(&a[6..]) {
        1 => {
            eth_header(out, &sha, &me.mac, ETHERTYPE_ARP);
            let len = arp(out, 2, &me.mac, &me.ip, &sha, &spa);
            Event::Answered {
                len,
                kind: Answer::Arp,
            }
        }
        2 => Event::ArpReply { ip: spa, mac: sha },
        _ => Event::Ignored,
    }
}

fn handle_ipv4(p: &[u8], src_mac: &[u8; 6], me: &Iface, out: &mut [u8]) -> Event {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Event::Ignored;
    }
    let ihl = usize::from(p[0] & 15) * 4;
    let total = usize::from(be16(&p[2..]));
    if ihl < 20 || total < ihl + 8 || total > p.len() || p[9] != IP_ICMP || p[16..20] != me.ip {
        return Event::Ignored;
    }
    if checksum(&p[..ihl]) != 0 {
        return Event::Ignored;
    }
    let src: [u8; 4] = p[12..16].try_into().unwrap_or([0; 4]);
    let icmp = &p[ihl..total];
    if checksum(icmp) != 0 {
        return Event::Ignored;
    }
    let (id, seq) = (be16(&icmp[4..]), be16(&icmp[6..]));
    match icmp[0] {
        ICMP_ECHO_REPLY => Event::EchoReply { from: src, id, seq },
        ICMP_ECHO_REQUEST if ETH + 20 + icmp.len() <= out.len() => {
            let len = icmp_echo(out, ICMP_ECHO_REPLY, me, src_mac, &src, id, seq, &icmp[8..]);
            Event::Answered {
                len,
                kind: Answer::Echo,
            }
        }
        _ => Event::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Iface = Iface {
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        ip: [10, 0, 2, 15],
    };
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const PEER: Iface = Iface {
        mac: PEER_MAC,
        ip: [10, 0, 2, 1],
    };

    #[test]
    fn checksum_rfc1071_example() {
        // Example from RFC 1071 §3: sum of these words is 0xddf2, checksum = !0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn arp_round_trip() {
        let mut req = [0u8; MAX_FRAME];
        let n = arp_request(&mut req, &PEER, &ME.ip);
        assert_eq!(n, 60);
        // We get the peer's request and answer it.
        let mut out = [0u8; MAX_FRAME];
        let ev = handle(&req[..n], &ME, &mut out);
        assert_eq!(
            ev,
            Event::Answered {
                len: 60,
                kind: Answer::Arp
            }
        );
        // The peer sees our answer as an ARP reply telling our MAC.
        let mut out2 = [0u8; MAX_FRAME];
        assert_eq!(
            handle(&out[..60], &PEER, &mut out2),
            Event::ArpReply {
                ip: ME.ip,
                mac: ME.mac
            }
        );
        // A request for someone else is ignored.
        let n = arp_request(&mut req, &PEER, &[10, 0, 2, 99]);
        assert_eq!(handle(&req[..n], &ME, &mut out), Event::Ignored);
    }

    #[test]
    fn ping_round_trip() {
        let mut req = [0u8; MAX_FRAME];
        let n = echo_request(&mut req, &PEER, &ME.mac, &ME.ip, 0x4242, 7);
        assert_eq!(n, ETH + 20 + 8 + 19);
        let mut out = [0u8; MAX_FRAME];
        let ev = handle(&req[..n], &ME, &mut out);
        assert_eq!(
            ev,
            Event::Answered {
                len: n,
                kind: Answer::Echo
            }
        );
        let mut out2 = [0u8; MAX_FRAME];
        assert_eq!(
            handle(&out[..n], &PEER, &mut out2),
            Event::EchoReply {
                from: ME.ip,
                id: 0x4242,
                seq: 7
            }
        );
        // Corrupt the IP header: ignored.
        req[ETH + 8] ^= 1;
        assert_eq!(handle(&req[..n], &ME, &mut out), Event::Ignored);
    }

    #[test]
    fn truncated_frames_are_ignored() {
        let mut req = [0u8; MAX_FRAME];
        let n = echo_request(&mut req, &PEER, &ME.mac, &ME.ip, 1, 1);
        let mut out = [0u8; MAX_FRAME];
        for cut in 0..n {
            assert_eq!(
                handle(&req[..cut], &ME, &mut out),
                Event::Ignored,
                "cut at {cut}"
            );
        }
    }
}
