//! Malformed and hostile input against the built `turnpike` binary, table
//! driven: every case has its exact expected outcome.
//!
//! Method. UDP: from a fresh socket, send the case's datagram, then a good
//! Binding request (the probe). Over loopback one client's datagrams reach
//! one shard in order, so the first datagram back must be the answer to
//! the probe (case dropped), or the answer to the case followed by the
//! probe's answer. TCP: a fresh connection per case, the case's bytes in
//! the given writes, then (when the stream must stay open) the probe on
//! the same connection; a stream the server must close is read to EOF.
//! After each TCP case a new connection must be answered, and after all
//! cases the server still answers on UDP and TCP.
//!
//! Outcomes: drop = no reply and the connection (if any) stays usable;
//! closed = the server closes the stream without sending a byte; a
//! malformed input must never get a reply at all (no amplification).

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a test: unwrap is its assertion, and it reads the clock to bound its waits"
)]

mod common;

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use hmac::Mac;
use turnpike_proto::wire::{
    Class, Message, MessageBuilder, MessageType, Method, TransactionId, attr, fingerprint_of,
};

/// What the server does with a case's input.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// No reply; the probe that follows is answered (stream stays open).
    Drop,
    /// A Binding success for the case's own transaction ID.
    Success { fingerprint: bool },
    /// A Binding error response for the case's own transaction ID.
    Error {
        code: u16,
        unknown: Vec<u16>,
        fingerprint: bool,
    },
    /// Stream closed by the server with no bytes sent.
    Closed,
    /// A Binding success for the case, then the stream closed.
    AnswerThenClosed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Drop => f.write_str("drop"),
            Outcome::Success { fingerprint: false } => f.write_str("success"),
            Outcome::Success { fingerprint: true } => f.write_str("success+FP"),
            Outcome::Error {
                code,
                unknown,
                fingerprint,
            } => {
                write!(f, "{code}")?;
                match unknown.as_slice() {
                    [] => {}
                    [a, .., b] if unknown.len() > 2 => {
                        write!(f, " [{a:#06x}..{b:#06x}: {}]", unknown.len())?
                    }
                    l => {
                        let l: Vec<String> = l.iter().map(|t| format!("{t:#06x}")).collect();
                        write!(f, " [{}]", l.join(","))?;
                    }
                }
                if *fingerprint {
                    f.write_str("+FP")?;
                }
                Ok(())
            }
            Outcome::Closed => f.write_str("closed"),
            Outcome::AnswerThenClosed => f.write_str("answer, closed"),
        }
    }
}

fn success() -> Outcome {
    Outcome::Success { fingerprint: false }
}

fn e420(unknown: &[u16]) -> Outcome {
    Outcome::Error {
        code: 420,
        unknown: unknown.to_vec(),
        fingerprint: false,
    }
}

struct Case {
    name: &'static str,
    /// The bytes, as separate writes (one datagram per case for UDP).
    writes: Vec<Vec<u8>>,
    /// Not a well-formed STUN message or frame: must never get a reply.
    malformed: bool,
    /// TCP only: half-close our side after the writes.
    fin: bool,
    expect: Outcome,
}

impl Case {
    fn new(name: &'static str, bytes: Vec<u8>, expect: Outcome) -> Self {
        let malformed = matches!(expect, Outcome::Drop | Outcome::Closed);
        Case {
            name,
            writes: vec![bytes],
            malformed,
            fin: false,
            expect,
        }
    }

    /// A well-formed message that is dropped anyway (responses,
    /// indications, wrong FINGERPRINT): still must not be answered.
    fn wellformed(mut self) -> Self {
        self.malformed = false;
        self
    }

    fn fin(mut self) -> Self {
        self.fin = true;
        self
    }

    fn split(mut self, parts: Vec<Vec<u8>>) -> Self {
        self.writes = parts;
        self
    }

    fn len(&self) -> usize {
        self.writes.iter().map(Vec::len).sum()
    }
}

/// The transaction ID every case message carries; the probe uses a fresh
/// random one, so the two can never be confused.
const CASE_TID: TransactionId = TransactionId::new(*b"bad-input-42");

fn builder(buf: &mut Vec<u8>, class: Class) -> MessageBuilder<'_> {
    MessageBuilder::new(buf, MessageType::new(Method::BINDING, class), CASE_TID)
}

/// A Binding message of a class, with attributes added by `f`.
fn msg(class: Class, f: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut builder(&mut buf, class));
    buf
}

fn request(f: impl FnOnce(&mut MessageBuilder<'_>)) -> Vec<u8> {
    msg(Class::Request, f)
}

/// A Binding request header with the given length field and `body`.
fn header_with_len(len: u16, body: &[u8]) -> Vec<u8> {
    let mut m = request(|_| {});
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Raw attribute: type, length field, then `value` as given (no padding).
fn raw_attr(typ: u16, len: u16, value: &[u8]) -> Vec<u8> {
    let mut v = typ.to_be_bytes().to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// HMAC-SHA1 over the attributes only (header left out): the right length
/// for MESSAGE-INTEGRITY, computed over the wrong range.
fn bogus_integrity(fingerprint: bool) -> Vec<u8> {
    let software = request(|b| {
        b.text(attr::SOFTWARE, "mi-over-wrong-range");
    });
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"password").unwrap();
    mac.update(&software[20..]);
    let tag = mac.finalize().into_bytes();
    request(|b| {
        b.text(attr::SOFTWARE, "mi-over-wrong-range")
            .attr(attr::MESSAGE_INTEGRITY, &tag);
        if fingerprint {
            b.fingerprint();
        }
    })
}

fn channel_data(ch: u16, data: &[u8], padded: bool) -> Vec<u8> {
    let mut v = ch.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    if padded {
        v.resize(v.len().next_multiple_of(4), 0);
    }
    v
}

/// A valid Binding request whose whole body is one comprehension-optional
/// attribute with a `value_len`-byte value.
fn big_request(value_len: usize) -> Vec<u8> {
    request(|b| {
        b.attr_with(0xC0DE, value_len, |v| {
            for (i, x) in v.iter_mut().enumerate() {
                *x = (i % 251) as u8;
            }
        });
    })
}

/// Cases that make sense as a datagram (UDP).
fn datagram_cases() -> Vec<Case> {
    let good = request(|_| {});
    let mut top10 = good.clone();
    top10[0] |= 0x80;
    let mut top11 = good.clone();
    top11[0] |= 0xC0;
    let mut bad_cookie = good.clone();
    bad_cookie[7] ^= 0x01;
    let mut fp_wrong = request(|b| {
        b.fingerprint();
    });
    let n = fp_wrong.len();
    fp_wrong[n - 1] ^= 0x01;
    let mut fp_right_then_garbled = request(|b| {
        b.text(attr::SOFTWARE, "abcd").fingerprint();
    });
    fp_right_then_garbled[24] = b'X'; // inside SOFTWARE, covered by the CRC
    let mut garbage = vec![0u8; 65_000];
    for (i, x) in garbage.iter_mut().enumerate() {
        *x = 0xFF ^ (i as u8);
    }
    let stun_garbage = header_with_len(64_980, &vec![0xAB; 64_980]);
    let many_unknown: Vec<u16> = (0x7F00..0x7F15).collect(); // 21 types
    let mut padding_garbage = request(|b| {
        b.text(attr::SOFTWARE, "x");
    });
    padding_garbage[25..28].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    // FINGERPRINT made right over the garbled padding.
    let padding_garbage_fp = {
        let mut m = padding_garbage.clone();
        let len = u16::from_be_bytes([m[2], m[3]]) + 8;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = fingerprint_of(&m);
        m.extend_from_slice(&raw_attr(attr::FINGERPRINT, 4, &crc.to_be_bytes()));
        m
    };

    vec![
        Case::new("empty datagram", vec![], Outcome::Drop),
        Case::new("1 byte", vec![0x00], Outcome::Drop),
        Case::new("19 bytes (header cut)", good[..19].to_vec(), Outcome::Drop),
        Case::new("top bits 10", top10, Outcome::Drop),
        Case::new("top bits 11", top11, Outcome::Drop),
        Case::new("bad magic cookie", bad_cookie, Outcome::Drop),
        Case::new(
            "length 2 (not a multiple of 4)",
            header_with_len(2, &[0, 0]),
            Outcome::Drop,
        ),
        Case::new(
            "length 8 > 4 bytes present",
            header_with_len(8, &raw_attr(0xC001, 0, &[])),
            Outcome::Drop,
        ),
        Case::new(
            "length 0 < 8 bytes present",
            header_with_len(0, &raw_attr(attr::SOFTWARE, 4, b"abcd")),
            Outcome::Drop,
        ),
        Case::new(
            "attribute header cut off (2 of 4)",
            header_with_len(4, &[0x80, 0x22]),
            Outcome::Drop,
        ),
        Case::new(
            "attribute length past the end",
            header_with_len(8, &raw_attr(attr::SOFTWARE, 8, b"abcd")),
            Outcome::Drop,
        ),
        Case::new(
            "attribute length 0xFFFF",
            header_with_len(8, &raw_attr(attr::SOFTWARE, 0xFFFF, b"abcd")),
            Outcome::Drop,
        ),
        Case::new(
            "MESSAGE-INTEGRITY of 16 bytes",
            request(|b| {
                b.attr(attr::MESSAGE_INTEGRITY, &[0x11; 16]);
            }),
            Outcome::Drop,
        ),
        Case::new(
            "MESSAGE-INTEGRITY-SHA256 of 12 bytes",
            request(|b| {
                b.attr(attr::MESSAGE_INTEGRITY_SHA256, &[0x11; 12]);
            }),
            Outcome::Drop,
        ),
        Case::new(
            "FINGERPRINT not last",
            request(|b| {
                b.fingerprint().text(attr::SOFTWARE, "after");
            }),
            Outcome::Drop,
        ),
        Case::new(
            "two FINGERPRINTs",
            request(|b| {
                b.fingerprint().fingerprint();
            }),
            Outcome::Drop,
        ),
        Case::new("FINGERPRINT wrong value", fp_wrong, Outcome::Drop).wellformed(),
        Case::new(
            "FINGERPRINT over altered bytes",
            fp_right_then_garbled,
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "FINGERPRINT of 8 bytes",
            request(|b| {
                b.attr(attr::FINGERPRINT, &[0; 8]);
            }),
            Outcome::Drop,
        ),
        Case::new(
            "Binding success response",
            msg(Class::Success, |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:9".parse().unwrap());
            }),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "Binding error response",
            msg(Class::Error, |b| {
                b.error_code(400, "Bad Request");
            }),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "Binding indication",
            msg(Class::Indication, |_| {}),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "indication with unknown comp.-required",
            msg(Class::Indication, |b| {
                b.attr(0x7F01, b"ind!");
            }),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "unknown comp.-required 0x7F01",
            request(|b| {
                b.attr(0x7F01, &[1, 2, 3, 4]);
            }),
            e420(&[0x7F01]),
        ),
        Case::new(
            "two unknown comp.-required",
            request(|b| {
                b.attr(0x0030, &[]).attr(0x7FFF, b"zz");
            }),
            e420(&[0x0030, 0x7FFF]),
        ),
        Case::new(
            "same unknown attribute twice",
            request(|b| {
                b.attr(0x4242, b"a").attr(0x4242, b"b");
            }),
            e420(&[0x4242]),
        ),
        Case::new(
            "unknown comp.-required + FINGERPRINT",
            request(|b| {
                b.attr(0x7F01, &[9; 8]).fingerprint();
            }),
            Outcome::Error {
                code: 420,
                unknown: vec![0x7F01],
                fingerprint: true,
            },
        ),
        Case::new(
            "21 unknown comp.-required (16 listed)",
            request(|b| {
                for t in &many_unknown {
                    b.attr(*t, &[]);
                }
            }),
            e420(&many_unknown[..16]),
        ),
        Case::new(
            "unknown comp.-optional 0xC001",
            request(|b| {
                b.attr(0xC001, b"opt");
            }),
            success(),
        ),
        Case::new(
            "zero-length comp.-optional attribute",
            request(|b| {
                b.attr(0xFFFF, &[]);
            }),
            success(),
        ),
        Case::new("non-zero attribute padding", padding_garbage, success()),
        Case::new(
            "non-zero padding + FINGERPRINT",
            padding_garbage_fp,
            Outcome::Success { fingerprint: true },
        ),
        Case::new(
            "known attribute, bad value (XMA family 7)",
            request(|b| {
                b.attr(attr::XOR_MAPPED_ADDRESS, &[0, 7, 0, 1, 1, 2, 3, 4]);
            }),
            success(),
        ),
        Case::new(
            "MESSAGE-INTEGRITY over the wrong range",
            bogus_integrity(false),
            success(),
        ),
        Case::new(
            "bogus MESSAGE-INTEGRITY + FINGERPRINT",
            bogus_integrity(true),
            Outcome::Success { fingerprint: true },
        ),
        Case::new(
            "bogus MESSAGE-INTEGRITY-SHA256",
            request(|b| {
                b.attr(attr::MESSAGE_INTEGRITY_SHA256, &[0x5A; 32]);
            }),
            success(),
        ),
        Case::new(
            "unknown comp.-required after MI (ignored)",
            request(|b| {
                b.attr(attr::MESSAGE_INTEGRITY, &[0x33; 20])
                    .attr(0x7F01, b"late");
            }),
            success(),
        ),
        Case::new(
            "ChannelData 0x4001 (no channel bound)",
            channel_data(0x4001, b"hello", true),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "ChannelData on RFC 5766 channel 0x5000 (no allocation)",
            channel_data(0x5000, b"hello", true),
            Outcome::Drop,
        ),
        Case::new(
            "ChannelData length past the end",
            {
                let mut v = channel_data(0x4001, b"hello", true);
                v[3] = 200;
                v
            },
            Outcome::Drop,
        ),
        Case::new("65 000 bytes of garbage", garbage, Outcome::Drop),
        Case::new(
            "64 KiB STUN header + garbage attributes",
            stun_garbage,
            Outcome::Drop,
        ),
        Case::new(
            "valid request, 65 000-byte comp.-opt. attr",
            big_request(65_000),
            success(),
        ),
    ]
}

/// Cases on a TCP stream.
fn stream_cases() -> Vec<Case> {
    let good = request(|_| {});
    let bytes = |v: &[u8]| v.iter().map(|b| vec![*b]).collect::<Vec<_>>();
    let mut starts_80 = good.clone();
    starts_80[0] = 0x80;
    let mut starts_c0 = good.clone();
    starts_c0[0] = 0xC0;
    let mut bad_cookie = good.clone();
    bad_cookie[4] = 0x00;
    // Unpadded ChannelData (5 data bytes, no 3 padding bytes) and a
    // request: the framer takes the request's first 3 bytes as padding and
    // then finds no magic cookie.
    let mut unpadded = channel_data(0x4001, b"hello", false);
    unpadded.extend_from_slice(&good);
    let max = big_request(65_532 - 4);
    assert_eq!(max.len(), turnpike_proto::wire::MAX_FRAME);
    // The largest frame with FINGERPRINT: the FINGERPRINT attribute sits
    // at offset 65 544, past what a 16-bit offset can hold.
    let max_fp = request(|b| {
        b.attr(0xC0DE, &vec![0x5A; 65_532 - 4 - 8]).fingerprint();
    });
    assert_eq!(max_fp.len(), turnpike_proto::wire::MAX_FRAME);
    let mut huge_header = header_with_len(65_532, &[0u8; 80]);
    huge_header.truncate(100);
    let mut good_then_garbage = good.clone();
    good_then_garbage.extend_from_slice(&[0xFF; 12]);
    let mut fp_wrong = request(|b| {
        b.fingerprint();
    });
    let n = fp_wrong.len();
    fp_wrong[n - 1] ^= 0x80;

    vec![
        Case::new("frame in single-byte writes", good.clone(), success()).split(bytes(&good)),
        Case::new("frame split inside the cookie", good.clone(), success())
            .split(vec![good[..6].to_vec(), good[6..].to_vec()]),
        Case::new("stream starting with 0x80", starts_80, Outcome::Closed),
        Case::new("stream starting with 0xC0", starts_c0, Outcome::Closed),
        Case::new("STUN frame with bad cookie", bad_cookie, Outcome::Closed),
        Case::new(
            "unaligned STUN length (2)",
            header_with_len(2, &[0, 0]),
            Outcome::Closed,
        ),
        Case::new(
            // 0x4000-0x7FFF is RFC 5766's channel range, still used by
            // libwebrtc and coturn clients: well framed, dropped for lack of
            // an allocation, and the connection stays usable.
            "ChannelData on RFC 5766 channel 0x7FFF (no allocation)",
            channel_data(0x7FFF, b"data", true),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "ChannelData on RFC 5766 channel 0x5000 (no allocation)",
            channel_data(0x5000, b"data", true),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "ChannelData 0x4001, padded (no channel)",
            channel_data(0x4001, b"hello", true),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "ChannelData unpadded, then a request",
            unpadded,
            Outcome::Closed,
        ),
        Case::new(
            "64 KiB frame (65 528-byte comp.-opt. attr)",
            max.clone(),
            success(),
        ),
        Case::new(
            "64 KiB frame, FINGERPRINT at offset 65 544",
            max_fp,
            Outcome::Success { fingerprint: true },
        ),
        Case::new("64 KiB frame in 1000-byte writes", max.clone(), success())
            .split(max.chunks(1000).map(<[u8]>::to_vec).collect()),
        Case::new(
            "half a header, then FIN",
            good[..10].to_vec(),
            Outcome::Closed,
        )
        .fin(),
        Case::new(
            "64 KiB declared, 100 bytes, then FIN",
            huge_header,
            Outcome::Closed,
        )
        .fin(),
        Case::new("connect, then FIN", vec![], Outcome::Closed).fin(),
        Case::new(
            "good frame + garbage in one write",
            good_then_garbage,
            Outcome::AnswerThenClosed,
        ),
        Case::new(
            "well framed, attribute past the end",
            header_with_len(8, &raw_attr(attr::SOFTWARE, 12, b"abcd")),
            Outcome::Drop,
        ),
        Case::new("FINGERPRINT wrong value", fp_wrong, Outcome::Drop).wellformed(),
        Case::new(
            "Binding indication",
            msg(Class::Indication, |_| {}),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "Binding success response",
            msg(Class::Success, |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:9".parse().unwrap());
            }),
            Outcome::Drop,
        )
        .wellformed(),
        Case::new(
            "unknown comp.-required 0x7F01",
            request(|b| {
                b.attr(0x7F01, &[1, 2, 3, 4]);
            }),
            e420(&[0x7F01]),
        ),
    ]
}

/// What came back, in order, until the probe's answer or end of stream.
enum Event {
    Message(Vec<u8>),
    Eof,
}

/// Turn the replies into an outcome, checking each message exactly.
fn classify(
    events: &[Event],
    probe_tid: TransactionId,
    mapped: SocketAddr,
    malformed: bool,
    input_len: usize,
) -> Result<(Outcome, usize), String> {
    let mut case_reply: Option<Outcome> = None;
    let mut reply_len = 0;
    let mut probe_answered = false;
    let mut closed = false;
    for ev in events {
        let m = match ev {
            Event::Eof => {
                closed = true;
                continue;
            }
            Event::Message(m) => m,
        };
        if closed || probe_answered {
            return Err("reply after the probe's answer or after EOF".into());
        }
        let parsed = Message::parse(m).map_err(|e| format!("reply does not parse: {e}"))?;
        let tid = parsed.transaction_id();
        if tid == probe_tid {
            check_binding_success(
                m,
                &Expect {
                    tid,
                    mapped,
                    software: None,
                    fingerprint: false,
                },
            );
            probe_answered = true;
        } else if tid == CASE_TID && case_reply.is_none() {
            reply_len = m.len();
            if malformed {
                return Err(format!(
                    "a malformed input of {input_len} bytes got a {}-byte reply",
                    m.len()
                ));
            }
            let fingerprint = match parsed.check_fingerprint() {
                Some(true) => true,
                None => false,
                Some(false) => return Err("reply has a wrong FINGERPRINT".into()),
            };
            case_reply = Some(match parsed.class() {
                Class::Success => {
                    check_binding_success(
                        m,
                        &Expect {
                            tid,
                            mapped,
                            software: None,
                            fingerprint,
                        },
                    );
                    Outcome::Success { fingerprint }
                }
                Class::Error => {
                    let (code, unknown) = check_binding_error(m, tid);
                    assert_eq!(
                        parsed.software().unwrap(),
                        None,
                        "no SOFTWARE in an unauthenticated error (amplification)"
                    );
                    Outcome::Error {
                        code,
                        unknown,
                        fingerprint,
                    }
                }
                c => return Err(format!("reply of class {c:?}")),
            });
        } else {
            return Err(format!("unexpected reply {m:02x?}"));
        }
    }
    let outcome = match (case_reply, probe_answered, closed) {
        (None, true, false) => Outcome::Drop,
        (Some(r), true, false) => r,
        (None, false, true) => Outcome::Closed,
        (Some(Outcome::Success { fingerprint: false }), false, true) => Outcome::AnswerThenClosed,
        (r, p, c) => {
            return Err(format!(
                "reply {r:?}, probe answered {p}, closed {c}: no such outcome"
            ));
        }
    };
    Ok((outcome, reply_len))
}

fn udp_try_recv(sock: &UdpSocket, server: SocketAddr) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("timeout/error waiting for a datagram: {e}"))?;
    if from != server {
        return Err(format!("datagram from {from}, not {server}"));
    }
    buf.truncate(n);
    Ok(buf)
}

fn run_udp(case: &Case, server: SocketAddr, ipv6: bool) -> Result<(Outcome, usize), String> {
    assert_eq!(case.writes.len(), 1, "one datagram per UDP case");
    let sock = udp_client(ipv6);
    let mapped = sock.local_addr().unwrap();
    let n = sock
        .send_to(&case.writes[0], server)
        .map_err(|e| format!("send: {e}"))?;
    assert_eq!(n, case.len(), "short UDP send");
    let probe_tid = new_tid();
    sock.send_to(&binding_request(probe_tid, false), server)
        .map_err(|e| format!("send probe: {e}"))?;
    let mut events = Vec::new();
    loop {
        let d = udp_try_recv(&sock, server)?;
        let is_probe = Message::parse(&d).is_ok_and(|m| m.transaction_id() == probe_tid);
        events.push(Event::Message(d));
        if is_probe || events.len() > 2 {
            break;
        }
    }
    classify(&events, probe_tid, mapped, case.malformed, case.len())
}

fn run_tcp(case: &Case, server: SocketAddr) -> Result<(Outcome, usize), String> {
    let tcp = tcp_connect(server);
    let mapped = tcp.local_addr().unwrap();
    let mut conn = FrameReader::new(tcp);
    for w in &case.writes {
        conn.stream
            .write_all(w)
            .map_err(|e| format!("write: {e}"))?;
    }
    if case.fin {
        conn.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
    }
    let probe_tid = new_tid();
    // Probe only where the stream must stay open: writing to a stream the
    // server has closed would turn its clean EOF into a reset.
    let keeps_open = matches!(
        case.expect,
        Outcome::Drop | Outcome::Success { .. } | Outcome::Error { .. }
    );
    if keeps_open {
        conn.stream
            .write_all(&binding_request(probe_tid, false))
            .map_err(|e| format!("write probe: {e}"))?;
    }
    let mut events = Vec::new();
    loop {
        match conn.try_next_frame()? {
            None => {
                events.push(Event::Eof);
                break;
            }
            Some(f) => {
                let is_probe = Message::parse(&f).is_ok_and(|m| m.transaction_id() == probe_tid);
                events.push(Event::Message(f));
                if is_probe || events.len() > 2 {
                    break;
                }
            }
        }
    }
    classify(&events, probe_tid, mapped, case.malformed, case.len())
}

/// A fresh TCP connection and a fresh UDP socket are both answered.
fn assert_alive(server: &TestServer) {
    let sock = udp_client(false);
    let tid = new_tid();
    let resp = udp_roundtrip(
        &sock,
        server.addr(Transport::Udp, false),
        &binding_request(tid, true),
    );
    check_binding_success(
        &resp,
        &Expect {
            tid,
            mapped: sock.local_addr().unwrap(),
            software: None,
            fingerprint: true,
        },
    );
    let tcp: TcpStream = tcp_connect(server.addr(Transport::Tcp, false));
    let mapped = tcp.local_addr().unwrap();
    let tid = new_tid();
    let resp = FrameReader::new(tcp).roundtrip(&binding_request(tid, true));
    check_binding_success(
        &resp,
        &Expect {
            tid,
            mapped,
            software: None,
            fingerprint: true,
        },
    );
}

struct Row {
    transport: &'static str,
    name: &'static str,
    bytes_in: usize,
    malformed: bool,
    expect: Outcome,
    observed: Result<(Outcome, usize), String>,
}

impl Row {
    fn ok(&self) -> bool {
        matches!(&self.observed, Ok((o, _)) if *o == self.expect)
    }
}

fn run_case(
    f: impl FnOnce() -> Result<(Outcome, usize), String>,
) -> Result<(Outcome, usize), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:>3}  {:<5} {:<44} {:>6} {:<4} {:<22} {:<22} {:>5}  result",
        "#", "via", "case", "in", "bad", "expected", "observed", "out"
    );
    for (i, r) in rows.iter().enumerate() {
        let (obs, out) = match &r.observed {
            Ok((o, n)) => (o.to_string(), n.to_string()),
            Err(e) => (format!("ERROR: {e}"), "-".into()),
        };
        println!(
            "{:>3}  {:<5} {:<44} {:>6} {:<4} {:<22} {:<22} {:>5}  {}",
            i + 1,
            r.transport,
            r.name,
            r.bytes_in,
            if r.malformed { "yes" } else { "no" },
            r.expect.to_string(),
            obs,
            out,
            if r.ok() { "ok" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.ok()).count();
    println!(
        "{} cases, {} ok, {failed} failed\n",
        rows.len(),
        rows.len() - failed
    );
}

#[test]
fn malformed_and_hostile_input() {
    let mut server = TestServer::start(
        "[server]\nthreads = 2\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddr = \"[::1]:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddr = \"127.0.0.1:0\"\n",
    );
    let mut rows = Vec::new();
    let dgrams = datagram_cases();
    let streams = stream_cases();
    assert!(dgrams.len() + streams.len() >= 30);
    for ipv6 in [false, true] {
        let addr = server.addr(Transport::Udp, ipv6);
        for case in &dgrams {
            rows.push(Row {
                transport: if ipv6 { "udp6" } else { "udp4" },
                name: case.name,
                bytes_in: case.len(),
                malformed: case.malformed,
                expect: case.expect.clone(),
                observed: run_case(|| run_udp(case, addr, ipv6)),
            });
        }
    }
    let tcp = server.addr(Transport::Tcp, false);
    for case in &streams {
        let observed = run_case(|| {
            let r = run_tcp(case, tcp)?;
            // Whatever happened to that connection, a new one is served.
            assert_alive(&server);
            Ok(r)
        });
        rows.push(Row {
            transport: "tcp4",
            name: case.name,
            bytes_in: case.len(),
            malformed: case.malformed,
            expect: case.expect.clone(),
            observed,
        });
    }
    print_table(&rows);
    server.assert_running();
    assert_alive(&server);
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            format!(
                "{} {}: expected {}, got {:?}",
                r.transport, r.name, r.expect, r.observed
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Plaintext STUN sent to a TLS listener is not a TLS handshake: the
/// server sends one fatal TLS alert (no STUN reply) and closes, and keeps
/// serving TLS clients.
#[test]
fn tls_listener_refuses_plaintext() {
    let cert = self_signed_cert();
    let server = TestServer::start(&format!(
        "[[listen]]\ntransport = \"tls\"\naddr = \"127.0.0.1:0\"\ncert = {}\nkey = {}\n",
        cert.cert_toml(),
        cert.key_toml()
    ));
    let addr = server.addr(Transport::Tls, false);
    let mut tcp = tcp_connect(addr);
    tcp.write_all(&binding_request(new_tid(), false)).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut tcp, &mut got)
        .unwrap_or_else(|e| panic!("server did not close within {IO_TIMEOUT:?}: {e}"));
    println!("TLS listener answered plaintext STUN with {got:02x?}, then closed");
    // Exactly one fatal TLS alert record (content type 21, TLS 1.2
    // record version, length 2, level 2 = fatal), then EOF.
    assert!(
        got.len() == 7 && got[..6] == [0x15, 0x03, 0x03, 0x00, 0x02, 0x02],
        "expected one fatal TLS alert and EOF, got {got:02x?}"
    );
    // A real TLS client is still served.
    let tls = tls_connect(addr, cert.client_config());
    let mapped = tls.sock.local_addr().unwrap();
    let tid = new_tid();
    let resp = FrameReader::new(tls).roundtrip(&binding_request(tid, false));
    check_binding_success(
        &resp,
        &Expect {
            tid,
            mapped,
            software: None,
            fingerprint: false,
        },
    );
}
