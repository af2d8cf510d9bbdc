//! `ChannelData::parse` (a UDP datagram).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike_fuzz::probe_channel_data(data);
});
