"""Who owns the other end of a TCP connection to us: asked of the Linux kernel."""

import errno
import ipaddress
import os
import socket
import struct
import sys

SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h: ask the kernel about one socket


NLMSG_ERROR = 2


def _diag_uid(family, client, server):
    """The owner of the TCP socket client -> server, asked of the kernel by netlink
    (NETLINK_SOCK_DIAG, an exact lookup: ~20 µs). None when there is no such
    socket here; OSError when this kernel cannot answer."""
    def address(ip):
        packed = socket.inet_pton(family, ip)
        return packed + bytes(16 - len(packed))
    # struct inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid:
    # ports and addresses in network order, interface, cookie (none)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    request += struct.pack("!HH16s16s", client[1], server[1], address(client[0]),
                           address(server[0]))
    request += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    # struct nlmsghdr: length, type, flags (NLM_F_REQUEST), sequence, port id
    message = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 1, 1, 0) + request
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as netlink:  # NETLINK_SOCK_DIAG
        netlink.settimeout(1)
        netlink.sendto(message, (0, 0))
        answer = netlink.recv(8192)
    kind = struct.unpack_from("=H", answer, 4)[0]
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, 16)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, os.strerror(code))
    # struct inet_diag_msg: 4 bytes, the 48-byte sockid, expires, rqueue, wqueue, uid, inode
    uid, inode = struct.unpack_from("=II", answer, 16 + 64)
    # A socket no process holds any more (closed: TIME_WAIT, an orphan) has no
    # inode, and the kernel says uid 0 for it: a client that sent its request and
    # closed at once would pass for root. Unknown, then.
    return uid if inode else None


def _proc_net(family, address):
    """An (ip, port) as /proc/net/tcp{,6} writes it: each 32-bit word in host byte order."""
    packed = socket.inet_pton(family, address[0])
    words = "".join("%08X" % int.from_bytes(packed[i:i + 4], sys.byteorder)
                    for i in range(0, len(packed), 4))
    return f"{words}:{address[1]:04X}"


def _proc_uid(family, client, server):
    """The same from /proc/net/tcp{,6}: slower (it lists every socket: 11 ms with
    2,700 of them), for a kernel without sock_diag. The client's socket is the row
    whose local end is the client and whose remote end is us."""
    tables = [(family, client, server)]
    mapped = [ipaddress.ip_address(end[0].split("%")[0]) for end in (client, server)]
    if all(getattr(ip, "ipv4_mapped", None) for ip in mapped):
        # an IPv4 client of a dual-stack server is listed with the IPv4 sockets
        tables.append((socket.AF_INET, (str(mapped[0].ipv4_mapped), client[1]),
                       (str(mapped[1].ipv4_mapped), server[1])))
    for family, client, server in tables:
        local, remote = _proc_net(family, client), _proc_net(family, server)
        with open("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp") as rows:
            for row in rows:
                fields = row.split()
                if fields[1:3] == [local, remote]:
                    return int(fields[7]) if fields[9] != "0" else None  # as above: closed
    return None


def peer_uid(connection, peer):
    """The local user owning the client's end of a TCP connection; None when unknown
    (another machine, or a kernel that will not say)."""
    family, server = connection.family, connection.getsockname()
    try:
        return _diag_uid(family, peer, server)
    except (OSError, ValueError, struct.error):
        pass
    try:
        return _proc_uid(family, peer, server)
    except (OSError, ValueError, IndexError):
        return None
