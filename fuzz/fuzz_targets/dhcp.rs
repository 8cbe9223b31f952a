//! The agent's DHCP client on what comes back from the wire: any datagram on port 68 is decoded
//! by dhcproto, matched against the client's transaction, and an ACK (over an OFFER) is turned
//! into a lease. The input is split in two at its first byte's value: the OFFER, then the ACK.
//! Nothing may panic; a NAK's text goes to the console and may not carry control characters.
#![no_main]

use std::net::Ipv4Addr;

use byol_agent::agent::cmdline::Mac;
use byol_agent::agent::dhcp::{hardware_address, lease_from, nak_reason, reply_to};
use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;

fn decode(b: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(b)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at((cut as usize * 4).min(rest.len()));
    let (Some(offer), ack) = (decode(a), decode(b)) else {
        return;
    };
    let mac = Mac(hardware_address(&offer)
        .and_then(|m| m.get(..6))
        .and_then(|m| m.try_into().ok())
        .unwrap_or([0; 6]));
    let _ = reply_to(&offer, offer.xid(), &mac);
    let why = nak_reason(&offer);
    assert!(
        !why.chars().any(char::is_control),
        "control character in {why:?}"
    );
    let ack = ack.unwrap_or_else(|| offer.clone());
    let lease = lease_from(&ack, &offer, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(lease.address, ack.yiaddr());
    let _ = u32::from(lease.netmask).count_ones();
});
