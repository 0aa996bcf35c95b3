"""Announcing restored macvlans: the frames, the schedule, the settings (no root needed)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from criu_macvlan import announce
from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan.errors import UsageError
from criu_macvlan.macvlan.announcing import image_frames

MAC = bytes.fromhex("02c0ffee0002")
V4 = socket.inet_pton(socket.AF_INET, "10.77.0.2")
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8:77::2")


def ones_complement_sum(data: bytes) -> int:
    total = 0
    for i in range(0, len(data), 2):
        total += int.from_bytes(data[i:i + 2].ljust(2, b"\0"), "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_the_default_schedule_is_qemus_announce_self() -> None:
    # QEMU: initial 50 ms, max 550 ms, 5 rounds, step 100 ms; the first round at once
    assert announce.DEFAULT.delays() == [0.05, 0.15, 0.25, 0.35]
    assert announce.Schedule(rounds=6, interval=100, step=200, max=450).delays() == [0.1, 0.3, 0.45, 0.45, 0.45]
    assert announce.Schedule(rounds=1).delays() == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("off", None),
        (False, None),
        ("rounds=0", None),
        ("on", announce.DEFAULT),
        (True, announce.DEFAULT),
        ("rounds=3,interval=20", announce.Schedule(rounds=3, interval=20)),
        ("rounds=2, interval=10, step=5, max=12", announce.Schedule(2, 10, 5, 12)),
    ],
)
def test_settings_parse(spec: str | bool, expected: announce.Schedule | None) -> None:
    assert announce.parse(spec) == expected


@pytest.mark.parametrize("spec", ["sometimes", "rounds=-1", "rounds=1000", "interval=", "speed=3", "rounds=2;x"])
def test_a_bad_setting_is_one_line_naming_it(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        announce.parse(spec, "$CRIU_MACVLAN_ANNOUNCE")
    text = str(err.value)
    assert "\n" not in text and text.startswith("$CRIU_MACVLAN_ANNOUNCE: bad value") and repr(spec) in text


def test_the_caller_then_the_environment_then_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "criu-macvlan.conf"
    conf.write_text("# announce less\nmacvlan-announce rounds=2,interval=10\n")
    env = {announce.CONFIG_ENV: str(conf)}
    assert announce.configured(None, env) == announce.Schedule(rounds=2, interval=10)
    assert announce.configured(None, {**env, announce.ENV: "off"}) is None
    assert announce.configured("rounds=4", {**env, announce.ENV: "off"}) == announce.Schedule(rounds=4)
    conf.write_text("macvlan-announce often\n")
    with pytest.raises(UsageError, match=f"macvlan-announce in {conf}: bad value 'often'"):
        announce.configured(None, env)


def test_gratuitous_arp_request_and_reply() -> None:
    request, reply = announce.garp(MAC, V4)
    for frame, op, target_mac in ((request, 1, b"\0" * 6), (reply, 2, MAC)):
        assert len(frame) == 60
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC and frame[12:14] == b"\x08\x06"
        htype, ptype, hlen, plen, got_op = struct.unpack("!HHBBH", frame[14:22])
        assert (htype, ptype, hlen, plen, got_op) == (1, 0x0800, 6, 4, op)
        assert frame[22:28] == MAC and frame[28:32] == V4  # sender: us
        assert frame[32:38] == target_mac and frame[38:42] == V4  # target IP: ours too (gratuitous)


def test_unsolicited_neighbour_advertisement() -> None:
    frame = announce.unsolicited_na(MAC, V6)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == MAC and frame[12:14] == b"\x86\xdd"
    ipv6, icmp = frame[14:54], frame[54:]
    payload_len, next_header, hop_limit = struct.unpack("!HBB", ipv6[4:8])
    assert (payload_len, next_header, hop_limit) == (len(icmp), 58, 255)
    assert ipv6[8:24] == V6 and ipv6[24:40] == socket.inet_pton(socket.AF_INET6, "ff02::1")
    assert icmp[0] == 136 and icmp[1] == 0
    flags = struct.unpack("!I", icmp[4:8])[0]
    assert flags >> 29 == 0b001  # router 0, solicited 0, override 1
    assert icmp[8:24] == V6
    assert icmp[24:32] == b"\x02\x01" + MAC  # target link-layer address option
    pseudo = ipv6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert ones_complement_sum(pseudo + icmp) == 0xFFFF  # the checksum checks out


def test_frames_per_link() -> None:
    frames, what = announce.frames_for(MAC, [V4], [V6])
    assert len(frames) == 3 and what == "2 ARP, 1 NA"
    frames, what = announce.frames_for(MAC, [], [])
    assert what == "1 frame (no address)"
    assert frames[0][:14] == b"\xff" * 6 + MAC + b"\x88\xb5" and len(frames[0]) == 60


def image_link(name: str, up: bool, *addrs: bytes) -> pb.macvlan_link:
    link = pb.macvlan_link(name=name, address=MAC, link_flags=0x1 if up else 0)
    for raw in addrs:
        link.addrs.add(family=socket.AF_INET if len(raw) == 4 else socket.AF_INET6, address=raw)
    return link


def test_the_images_give_the_frames_of_the_links_that_are_up() -> None:
    frames = image_frames([image_link("up0", True, V4), image_link("down0", False, V4)])
    assert frames is not None and [(f.name, f.what) for f in frames] == [("up0", "2 ARP, 0 NA")]
    # no link up: nothing to announce (no announcer is armed), whatever the down links' addresses
    assert image_frames([image_link("down0", False, V6), image_link("down1", False)]) == []
    # an IPv6 address on a link that is up: only the restored netns tells whether it is still tentative
    assert image_frames([image_link("up0", True, V6), image_link("up1", True, V4)]) is None


@pytest.mark.integration  # a packet socket: CAP_NET_RAW
def test_a_failed_send_is_one_error_per_link() -> None:
    sock = announce.packet_socket()
    links = [announce.LinkFrames("nosuchlink0", [announce.hello(MAC)] * 3, "")]
    with sock:
        errors = announce.send_round(sock, links)
    assert list(errors) == ["nosuchlink0"]
    line = announce.warning("nosuchlink0", errors["nosuchlink0"])
    assert "\n" not in line and line.startswith("cannot announce nosuchlink0: ")
