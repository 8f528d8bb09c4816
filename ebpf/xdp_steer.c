// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// quic-xdp steering program.
//
// Redirects UDP datagrams addressed to this host's QUIC listener into the
// AF_XDP socket bound to the receiving rx queue. Only what is ours: the
// frame's destination MAC must be the interface's and its destination
// address one of the listener's (a wildcard listener is expanded by
// userspace into the interface's addresses). Everything else - ARP, ICMP,
// TCP, other UDP, frames for other hosts (a bridge, promiscuous mode,
// macvlan neighbours, routed traffic), VLAN-tagged frames, IPv4 options,
// fragments, IPv6 extension headers, martian sources, truncated or
// malformed frames - goes to the kernel untouched (XDP_PASS), which applies
// its own rules. If no socket is bound for the queue, bpf_redirect_map's
// XDP_PASS fallback hands the datagram to the kernel, where the
// port-reservation socket still receives it.
//
// In front of the socket, what cannot be served is dropped (XDP_DROP:
// denied sources, datagrams too short for QUIC, connection attempts in
// datagrams under 1200 bytes, sources over their Initial rate, short
// header and Handshake packets whose connection ID the server cannot have
// issued), and a
// client that offers another QUIC version is answered from here with
// Version Negotiation (XDP_TX).
//
// Userspace (datapath/src/program.rs) fills STEER_TARGETS, XSKS, CID_CHECK
// and the SOURCE_POLICY maps and reads STEER_STATS. Keep the layouts below in sync with it.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_ 0x2000
#define IP_OFFSET_ 0x1FFF

// Listener key: (family, port, addr), always an exact local address. IPv4
// addresses occupy the first 4 bytes.
struct steer_key {
    __u8 family; // 4 or 6
    __u8 pad;
    __be16 port;
    __u8 addr[16];
};

// Why a frame got its verdict; index into STEER_STATS.
enum steer_reason {
    STEER_REDIRECTED = 0,     // handed to the AF_XDP socket of its rx queue
    STEER_PASS_NO_SOCKET = 1, // matched, but no socket bound on this rx queue
    STEER_PASS_NOT_IP = 2,    // ARP, LLDP, unknown ethertype...
    STEER_PASS_NOT_UDP = 3,   // TCP, ICMP, IPv6 extension headers...
    STEER_PASS_FRAGMENT = 4,  // IPv4 fragment: the kernel reassembles
    STEER_PASS_MALFORMED = 5, // truncated, bad lengths, bad version
    STEER_PASS_NO_MATCH = 6,  // UDP for another port or address
    STEER_PASS_TOO_BIG = 7,   // matched, but larger than a UMEM frame
    STEER_PASS_NOT_OURS = 8,  // destination MAC is another host's, or group
    STEER_PASS_VLAN = 9,      // VLAN-tagged: no VLAN is configured here
    STEER_PASS_IP_OPTIONS = 10, // IPv4 options (source routes...): kernel rules
    STEER_PASS_MARTIAN = 11,  // impossible source address or source MAC
    STEER_DROP_NOT_QUIC = 12, // shorter than any QUIC packet to us can be
    STEER_DROP_SHORT_INITIAL = 13, // connection attempt in a datagram < 1200 B
    STEER_DROP_INITIAL_RATE = 14,  // source over its Initial rate limit
    STEER_DROP_DENIED = 15,        // source in a denied prefix
    STEER_DROP_NOT_ALLOWED = 16,   // an allow list exists; source not in it
    STEER_TX_VERSION_NEGOTIATION = 17, // another QUIC version: answered here
    STEER_ABORTED = 18,            // a rewrite failed midway (a program bug)
    STEER_DROP_UNKNOWN_CID = 19,   // short header/Handshake: not a CID we issued
    STEER_REASONS = 20,
};

// Largest frame an AF_XDP socket can take (its UMEM frame size less
// headroom); set at load time, 0 for no limit. Generic XDP can see GSO/GRO
// super-packets (veth passes a sender's GSO skb through whole): redirected,
// the socket would drop them, so they go to the kernel, which segments them
// for the port-reservation socket.
volatile const __u32 MAX_FRAME_LEN = 0;

// Shorter datagrams are never valid QUIC (RFC 9000 10.3: a short header
// packet needs 21 bytes; a stateless reset from a peer may be that short).
#define MIN_QUIC_DATAGRAM 21
// RFC 9000 14.1: a client's Initial travels in a datagram of >= 1200 bytes.
#define MIN_INITIAL_DATAGRAM 1200
#define QUIC_V1 0x00000001
// Longest connection ID QUIC v1 allows (RFC 9000 17.2). Other versions may
// use up to 255 bytes (RFC 8999); those are left to the endpoint.
#define MAX_CID_LEN 20
#define CID_MASK 0x1f
// A CID length (1..=20) as the verifier can bound it, even when reloaded
// unchecked from the stack: 1..=32.
#define CID_COPY(n) ((((n) - 1) & CID_MASK) + 1)
// Where the QUIC payload starts: IP headers without options or extension
// headers reach this far.
#define QUIC_OFF_V4 (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))
#define QUIC_OFF_V6 (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr))

// Per-source Initial rate limit (GCRA): one Initial per
// INITIAL_INTERVAL_NS on average, bursts up to INITIAL_BURST_NS ahead of
// that. 0 disables it. Set at load time.
volatile const __u64 INITIAL_INTERVAL_NS = 0;
volatile const __u64 INITIAL_BURST_NS = 0;

// Set at load time for a server that speaks only QUIC v1 (quic-xdp's
// engine): a long header of another version can then only be a client's
// first packet, answered here with Version Negotiation (or dropped under
// 1200 bytes). 0 for other users of the program (quinn on the AF_XDP
// socket, clients): their peers' versions are theirs to judge.
volatile const __u8 ANSWER_VERSION_NEGOTIATION = 0;

// The check in the server's own connection IDs (datapath/src/cid_check.rs):
// a CID is [engine ^ p0, p1, r0, ..., r5], p0 and p1 the low bytes of
// SipHash-1-3 keyed (k0, k1) over the random bytes r, engine < engines.
// After the handshake a client addresses the server only by CIDs the
// server issued, so a short header or Handshake packet whose CID fails the
// check is junk (or a client's stateless reset, which then costs the
// server an idle timeout: resets to servers are rare). engines == 0: no
// check (QUIC-LB CIDs, quinn on the socket, clients).
struct cid_check {
    __u64 k0;
    __u64 k1;
    __u32 engines;
    __u32 pad;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct cid_check);
} CID_CHECK SEC(".maps");

#define CHECKED_CID_LEN 8

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                               \
    do {                                                                       \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);          \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                               \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                               \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);          \
    } while (0)

// SipHash-1-3 of a message shorter than 8 bytes, given as its last block
// (the bytes little-endian, the length in the top byte).
static __always_inline __u64 siphash13_short(__u64 k0, __u64 k1, __u64 b)
{
    __u64 v0 = k0 ^ 0x736f6d6570736575ULL;
    __u64 v1 = k1 ^ 0x646f72616e646f6dULL;
    __u64 v2 = k0 ^ 0x6c7967656e657261ULL;
    __u64 v3 = k1 ^ 0x7465646279746573ULL;
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

// The configured check, or NULL for none.
static __always_inline struct cid_check *configured_cid_check(void)
{
    __u32 zero = 0;
    struct cid_check *c = bpf_map_lookup_elem(&CID_CHECK, &zero);
    return c && c->engines ? c : 0;
}

// Whether the CHECKED_CID_LEN bytes at `cid` pass `c`.
static __always_inline int cid_is_ours(const struct cid_check *c, const __u8 *cid)
{
    __u64 b = (__u64)(CHECKED_CID_LEN - 2) << 56;
    for (int i = 2; i < CHECKED_CID_LEN; i++)
        b |= (__u64)cid[i] << (8 * (i - 2));
    __u64 h = siphash13_short(c->k0, c->k1, b);
    return cid[1] == (__u8)(h >> 8) && (__u8)(cid[0] ^ (__u8)h) < c->engines;
}

// Source address -> theoretical arrival time of its next Initial (ns).
// LRU: a flood of spoofed sources evicts old entries, never fills up.
struct source_key {
    __u8 family;
    __u8 pad[3];
    __u8 addr[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct source_key);
    __type(value, __u64);
} INITIAL_SOURCES SEC(".maps");

// Source policy for the port: the admin's allow/deny prefixes, enforced
// here since nftables never sees steered datagrams. The longest matching
// prefix decides; userspace adds /0 entries (NOT_ALLOWED) when an allow
// list exists, so unlisted sources are refused.
#define SOURCE_ALLOW 1
#define SOURCE_DENY 2
#define SOURCE_NOT_ALLOWED 3

struct lpm_v4 {
    __u32 prefixlen;
    __u8 addr[4];
};

struct lpm_v6 {
    __u32 prefixlen;
    __u8 addr[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 16384);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct lpm_v4);
    __type(value, __u8);
} SOURCE_POLICY_V4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 16384);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct lpm_v6);
    __type(value, __u8);
} SOURCE_POLICY_V6 SEC(".maps");

// The policy's verdict for a source: SOURCE_ALLOW when nothing matches.
static __always_inline __u8 source_policy(const struct source_key *src)
{
    __u8 *verdict;
    if (src->family == 4) {
        struct lpm_v4 key = {.prefixlen = 32};
        __builtin_memcpy(key.addr, src->addr, 4);
        verdict = bpf_map_lookup_elem(&SOURCE_POLICY_V4, &key);
    } else {
        struct lpm_v6 key = {.prefixlen = 128};
        __builtin_memcpy(key.addr, src->addr, 16);
        verdict = bpf_map_lookup_elem(&SOURCE_POLICY_V6, &key);
    }
    return verdict ? *verdict : SOURCE_ALLOW;
}

// The interface's MAC, set at load time: frames to any other destination
// MAC (another host's, broadcast, multicast) are not ours.
volatile const __u8 IFACE_MAC[6] = {0};

// One entry per (listener, local address): room for many addresses.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct steer_key);
    __type(value, __u8);
} STEER_TARGETS SEC(".maps");

// Keyed by rx queue index; userspace raises max_entries to the queue count.
struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} XSKS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STEER_REASONS);
    __type(key, __u32);
    __type(value, __u64);
} STEER_STATS SEC(".maps");

static __always_inline int verdict(enum steer_reason reason, int action)
{
    __u32 key = reason;
    __u64 *count = bpf_map_lookup_elem(&STEER_STATS, &key);
    if (count)
        *count += 1;
    return action;
}

static __always_inline int is_listener(struct steer_key *key)
{
    return bpf_map_lookup_elem(&STEER_TARGETS, key) != 0;
}

static __always_inline int mac_is_ours(const __u8 *mac)
{
    // Byte by byte: IFACE_MAC is read-only data the verifier knows.
    for (int i = 0; i < 6; i++)
        if (mac[i] != IFACE_MAC[i])
            return 0;
    return 1;
}

// Sources no host can send from: "this network", loopback, multicast,
// reserved/broadcast, or our own destination (a LAND-style reflection).
static __always_inline int martian_v4(__be32 src, __be32 dst)
{
    __u8 first = bpf_ntohl(src) >> 24;
    return first == 0 || first == 127 || first >= 224 || src == dst;
}

// Unspecified, loopback, multicast, IPv4-mapped, or our own destination.
static __always_inline int martian_v6(const struct in6_addr *src, const struct in6_addr *dst)
{
    const __u32 *w = src->in6_u.u6_addr32;
    const __u32 *d = dst->in6_u.u6_addr32;
    if (src->in6_u.u6_addr8[0] == 0xff)
        return 1;
    if (w[0] == d[0] && w[1] == d[1] && w[2] == d[2] && w[3] == d[3])
        return 1;
    if (w[0] == 0 && w[1] == 0) {
        if (w[2] == 0 && (w[3] == 0 || w[3] == bpf_htonl(1)))
            return 1;
        if (w[2] == bpf_htonl(0xffff))
            return 1;
    }
    return 0;
}

// Whether `src` may send another Initial now; charges it if so.
static __always_inline int initial_allowed(struct source_key *src)
{
    __u64 interval = INITIAL_INTERVAL_NS;
    if (!interval)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    __u64 *tat = bpf_map_lookup_elem(&INITIAL_SOURCES, src);
    if (!tat) {
        __u64 next = now + interval;
        bpf_map_update_elem(&INITIAL_SOURCES, src, &next, BPF_ANY);
        return 1;
    }
    __u64 t = *tat > now ? *tat : now;
    if (t - now > INITIAL_BURST_NS)
        return 0;
    // Racy across CPUs by design: a limit, not an exact count.
    *tat = t + interval;
    return 1;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
    __u32 s = (__u32)sum;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)~s;
}

// Answers a long header packet of a version other than v1 with a Version
// Negotiation packet (RFC 9000 17.2.1, RFC 8999 6) listing v1, sent back
// from here (XDP_TX): the frame is rewritten in place, addresses, ports
// and MACs swapped, connection IDs echoed. Nothing is kept. Returns -1,
// with the frame untouched, when it cannot (a connection ID longer than
// v1 allows): the endpoint decides then. The frame must end with the
// datagram of `quic_len` bytes (checked by the caller).
static __always_inline int version_negotiation(struct xdp_md *ctx, int v6, __u32 quic_len)
{
    __u32 quic_off = v6 ? QUIC_OFF_V6 : QUIC_OFF_V4;
    __u32 udp_off = quic_off - sizeof(struct udphdr);
    // Lengths are masked where used (CID_MASK) as well as checked: the
    // compiler may reload them from the stack, where the verifier no
    // longer knows the check, and the mask alone keeps every copy inside
    // these buffers.
    __u8 dcid[CID_MASK + 1], scid[CID_MASK + 1];
    __u8 dl, sl;

    if (bpf_xdp_load_bytes(ctx, quic_off + 5, &dl, 1) || dl > MAX_CID_LEN)
        return -1;
    if (dl && bpf_xdp_load_bytes(ctx, quic_off + 6, dcid, CID_COPY(dl)))
        return -1;
    if (bpf_xdp_load_bytes(ctx, quic_off + 6 + (dl & CID_MASK), &sl, 1) || sl > MAX_CID_LEN)
        return -1;
    if (sl && bpf_xdp_load_bytes(ctx, quic_off + 7 + (dl & CID_MASK), scid, CID_COPY(sl)))
        return -1;
    dl &= CID_MASK;
    sl &= CID_MASK;

    // Long header form with the fixed bit set (RFC 9000 17.2.1) and the
    // other bits arbitrary, version 0, the client's source CID as
    // destination and its destination CID as source, then the versions
    // supported.
    __u8 head[6] = {0xc0 | (bpf_get_prandom_u32() & 0x3f), 0, 0, 0, 0, sl};
    __be32 supported = bpf_htonl(QUIC_V1);
    __u32 vn_len = sizeof(head) + sl + 1 + dl + sizeof(supported);
    if (bpf_xdp_store_bytes(ctx, quic_off, head, sizeof(head)))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    if (sl && bpf_xdp_store_bytes(ctx, quic_off + 6, scid, CID_COPY(sl)))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    if (bpf_xdp_store_bytes(ctx, quic_off + 6 + (sl & CID_MASK), &dl, 1))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    if (dl && bpf_xdp_store_bytes(ctx, quic_off + 7 + (sl & CID_MASK), dcid, CID_COPY(dl)))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    if (bpf_xdp_store_bytes(ctx, quic_off + 7 + (sl & CID_MASK) + (dl & CID_MASK), &supported,
                            sizeof(supported)))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    if (bpf_xdp_adjust_tail(ctx, (int)vn_len - (int)quic_len))
        return verdict(STEER_ABORTED, XDP_ABORTED);

    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct udphdr *udp;
    __u16 udp_len = sizeof(*udp) + vn_len;
    __s64 sum;
    // Bounds checked per family, with constant offsets the verifier sees.
    if (v6) {
        if (data + QUIC_OFF_V6 > end)
            return verdict(STEER_ABORTED, XDP_ABORTED);
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        struct in6_addr addr = ip6->saddr;
        ip6->saddr = ip6->daddr;
        ip6->daddr = addr;
        ip6->priority = 0;
        __builtin_memset(ip6->flow_lbl, 0, sizeof(ip6->flow_lbl));
        ip6->payload_len = bpf_htons(udp_len);
        ip6->hop_limit = 64;
        sum = bpf_csum_diff(0, 0, (__be32 *)&ip6->saddr, 32, 0);
        udp = (void *)(ip6 + 1);
    } else {
        if (data + QUIC_OFF_V4 > end)
            return verdict(STEER_ABORTED, XDP_ABORTED);
        struct iphdr *ip = (void *)(eth + 1);
        __be32 addr = ip->saddr;
        ip->saddr = ip->daddr;
        ip->daddr = addr;
        ip->tos = 0;
        ip->tot_len = bpf_htons(sizeof(*ip) + udp_len);
        ip->id = 0;
        ip->frag_off = bpf_htons(0x4000); // DF
        ip->ttl = 64;
        ip->check = 0;
        ip->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
        sum = bpf_csum_diff(0, 0, (__be32 *)&ip->saddr, 8, 0);
        udp = (void *)(ip + 1);
    }
    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);
    __be16 port = udp->source;
    udp->source = udp->dest;
    udp->dest = port;
    udp->len = bpf_htons(udp_len);
    udp->check = 0;

    // The rest of the pseudo-header (protocol, UDP length) sums the same
    // for both families; then the datagram, zero-padded.
    __u8 pseudo[4] = {0, IPPROTO_UDP, udp_len >> 8, udp_len & 0xff};
    sum = bpf_csum_diff(0, 0, (__be32 *)pseudo, sizeof(pseudo), (__wsum)sum);
    __u8 datagram[128] = {};
    if (udp_len > sizeof(datagram) ||
        bpf_xdp_load_bytes(ctx, udp_off, datagram, ((udp_len - 1) & 0x7f) + 1))
        return verdict(STEER_ABORTED, XDP_ABORTED);
    sum = bpf_csum_diff(0, 0, (__be32 *)datagram, sizeof(datagram), (__wsum)sum);
    __u16 check = csum_fold(sum);
    udp->check = check ? check : 0xffff;
    return verdict(STEER_TX_VERSION_NEGOTIATION, XDP_TX);
}

SEC("xdp")
int xdp_steer(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct steer_key key = {};
    struct source_key src = {};
    struct udphdr *udp;
    __u32 l4_room; // bytes the IP header says follow it
    __u16 proto;
    void *l3;

    if ((void *)(eth + 1) > end)
        return verdict(STEER_PASS_MALFORMED, XDP_PASS);
    proto = eth->h_proto;
    l3 = eth + 1;
    if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
        // No VLAN is configured for the endpoint: the kernel's VLAN
        // devices (if any) decide.
        if ((void *)((__u8 *)l3 + 4) > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        return verdict(STEER_PASS_VLAN, XDP_PASS);
    }

    if (proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = l3;
        __u32 hdr_len, total;
        if ((void *)(ip + 1) > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        hdr_len = ip->ihl * 4;
        total = bpf_ntohs(ip->tot_len);
        if (ip->version != 4 || hdr_len < sizeof(*ip) || total < hdr_len ||
            l3 + total > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        if (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
            return verdict(STEER_PASS_FRAGMENT, XDP_PASS);
        if (ip->protocol != IPPROTO_UDP)
            return verdict(STEER_PASS_NOT_UDP, XDP_PASS);
        // QUIC clients send no IP options; source routes and the like are
        // the kernel's to accept or drop.
        if (hdr_len != sizeof(*ip))
            return verdict(STEER_PASS_IP_OPTIONS, XDP_PASS);
        if (martian_v4(ip->saddr, ip->daddr))
            return verdict(STEER_PASS_MARTIAN, XDP_PASS);
        udp = l3 + hdr_len;
        l4_room = total - hdr_len;
        key.family = 4;
        __builtin_memcpy(key.addr, &ip->daddr, 4);
        src.family = 4;
        __builtin_memcpy(src.addr, &ip->saddr, 4);
    } else if (proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = l3;
        if ((void *)(ip6 + 1) > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        l4_room = bpf_ntohs(ip6->payload_len);
        if (ip6->version != 6 || (void *)(ip6 + 1) + l4_room > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        // Extension headers (fragments included) are left to the kernel.
        if (ip6->nexthdr != IPPROTO_UDP)
            return verdict(STEER_PASS_NOT_UDP, XDP_PASS);
        if (martian_v6(&ip6->saddr, &ip6->daddr))
            return verdict(STEER_PASS_MARTIAN, XDP_PASS);
        udp = (void *)(ip6 + 1);
        key.family = 6;
        __builtin_memcpy(key.addr, &ip6->daddr, 16);
        src.family = 6;
        __builtin_memcpy(src.addr, &ip6->saddr, 16);
    } else {
        return verdict(STEER_PASS_NOT_IP, XDP_PASS);
    }

    if ((void *)(udp + 1) > end)
        return verdict(STEER_PASS_MALFORMED, XDP_PASS);
    __u32 udp_len = bpf_ntohs(udp->len);
    if (udp_len < sizeof(*udp) || udp_len > l4_room)
        return verdict(STEER_PASS_MALFORMED, XDP_PASS);

    key.port = udp->dest;
    if (!is_listener(&key))
        return verdict(STEER_PASS_NO_MATCH, XDP_PASS);
    // Ours by address; also by link: not a frame for another host that
    // reached us (bridge, promiscuous mode), nor from a group address.
    if (!mac_is_ours(eth->h_dest))
        return verdict(STEER_PASS_NOT_OURS, XDP_PASS);
    if (eth->h_source[0] & 1)
        return verdict(STEER_PASS_MARTIAN, XDP_PASS);

    // The front line: what cannot be served is dropped here, before it
    // costs a copy, a wake-up and quinn-proto's time.
    switch (source_policy(&src)) {
    case SOURCE_DENY:
        return verdict(STEER_DROP_DENIED, XDP_DROP);
    case SOURCE_NOT_ALLOWED:
        return verdict(STEER_DROP_NOT_ALLOWED, XDP_DROP);
    }
    __u32 quic_len = udp_len - sizeof(*udp);
    __u8 *quic = (void *)(udp + 1);
    if (quic_len < MIN_QUIC_DATAGRAM)
        return verdict(STEER_DROP_NOT_QUIC, XDP_DROP);
    if ((void *)(quic + 5) > end)
        return verdict(STEER_PASS_MALFORMED, XDP_PASS);
    __u32 version = (__u32)quic[1] << 24 | (__u32)quic[2] << 16 | (__u32)quic[3] << 8 | quic[4];
    // A long header of another version (not a Version Negotiation packet,
    // version 0) can only be a client's first packet.
    int other_version =
        ANSWER_VERSION_NEGOTIATION && (quic[0] & 0x80) && version != QUIC_V1 && version != 0;
    // Long header, version 1, type Initial (bits 0x30 clear).
    if (((quic[0] & 0xb0) == 0x80 && version == QUIC_V1) || other_version) {
        if (quic_len < MIN_INITIAL_DATAGRAM)
            return verdict(STEER_DROP_SHORT_INITIAL, XDP_DROP);
        if (!initial_allowed(&src))
            return verdict(STEER_DROP_INITIAL_RATE, XDP_DROP);
    }
    // Short header and Handshake packets name a CID we issued; the
    // datagram is long enough (>= MIN_QUIC_DATAGRAM) to hold it.
    struct cid_check *check = configured_cid_check();
    if (check && !(quic[0] & 0x80)) {
        if ((void *)(quic + 1 + CHECKED_CID_LEN) > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        if (!cid_is_ours(check, quic + 1))
            return verdict(STEER_DROP_UNKNOWN_CID, XDP_DROP);
    } else if (check && (quic[0] & 0xb0) == 0xa0 && version == QUIC_V1) {
        if ((void *)(quic + 6 + CHECKED_CID_LEN) > end)
            return verdict(STEER_PASS_MALFORMED, XDP_PASS);
        if (quic[5] != CHECKED_CID_LEN || !cid_is_ours(check, quic + 6))
            return verdict(STEER_DROP_UNKNOWN_CID, XDP_DROP);
    }
    // Only a frame that ends with its datagram (nothing unchecked is sent
    // back after the reply), and never to port 0.
    if (other_version && (void *)quic + quic_len == end && udp->source) {
        int action = version_negotiation(ctx, key.family == 6, quic_len);
        if (action >= 0)
            return action;
        // Packet pointers are stale after the helper calls: the frame is
        // unchanged, but the verifier must see fresh ones.
        data = (void *)(long)ctx->data;
        end = (void *)(long)ctx->data_end;
    }
    if (MAX_FRAME_LEN && end - data > MAX_FRAME_LEN)
        return verdict(STEER_PASS_TOO_BIG, XDP_PASS);

    if (bpf_redirect_map(&XSKS, ctx->rx_queue_index, XDP_PASS) == XDP_REDIRECT)
        return verdict(STEER_REDIRECTED, XDP_REDIRECT);
    return verdict(STEER_PASS_NO_SOCKET, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
