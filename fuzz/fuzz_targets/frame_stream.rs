//! Arbitrary bytes as a TCP/TLS stream: `frame_len`, then each frame parsed
//! as STUN or ChannelData.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike_fuzz::probe_stream(data);
});
