/* Everything the capture programs share with each other and with Python.
 *
 * The one Python mirror is agent/node/datapath/abi.py; the agent compares it with the
 * compiled program's types at load and refuses to run on any difference, so a
 * field added here must be added there too (same name, same order).
 *
 * Values (ports, marks) are not compiled in: Python writes them into
 * mesh_config at load, so they have a single definition, on the Python side
 * (the ports in agent/common/constants.py, the marks in abi.py).
 *
 * How a captured connection reaches the agent, without NAT:
 *   tc egress (eth0)  marks outbound TCP and redirects it to lo ingress;
 *                     what it cannot read whole it drops, both ways on eth0;
 *   ip rule           routes marked packets to table 100: local delivery;
 *   tc ingress (lo)   tags each captured outbound SYN's tuple in mesh_captured;
 *   tc ingress (eth0) tags each new inbound SYN the same way (and any packet
 *                     that only a listener would take: a SYN cookie's ACK);
 *   sk_lookup         the kernel's listener lookup asks capture_lookup, which
 *                     gives a tagged tuple the agent listener its tag names
 *                     (15001 outbound, 15006 inbound) from mesh_listeners.
 * Choosing the listener at the kernel's own lookup (not with bpf_sk_assign in
 * tc) lets the kernel's TIME_WAIT handling run: a client reusing a port the
 * agent still holds in TIME_WAIT gets a new connection, as with TPROXY.
 */
#ifndef SLIPSTREAM_MESH_H
#define SLIPSTREAM_MESH_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

struct mesh_config {
	__u32 capture_mark;   /* put on captured packets; an ip rule routes it to table 100 (local) */
	__u32 agent_mark;     /* SO_MARK of every agent socket: such packets are never captured */
	__u16 outbound_port;  /* 15001, host byte order */
	__u16 inbound_port;   /* 15006, host byte order */
	__u16 hbone_port;     /* 15008, host byte order: inbound HBONE is left to its listener */
	__u16 reserved;
	__u32 lo_ifindex;     /* the pod's loopback (1 in every namespace) */
};

/* Per-CPU; the agent sums the CPUs for /metrics. */
struct mesh_counters {
	__u64 outbound_new;       /* SYNs of new outbound connections sent to the agent */
	__u64 outbound_packets;   /* all outbound packets sent to the agent */
	__u64 inbound_new;        /* inbound SYNs sent to the agent's 15006 listener */
	__u64 no_listener;        /* SYNs dropped because the agent was not listening (fail closed) */
	__u64 assigned;           /* listener lookups answered with an agent listener */
	/* Packets dropped at eth0 (either way) because they could hide TCP from capture: */
	__u64 drop_fragment;      /* IPv4 TCP in fragments (capture runs before reassembly) */
	__u64 drop_malformed;     /* IPv4 TCP whose headers do not fit the packet */
	__u64 drop_vlan;          /* frames still carrying an 802.1Q/802.1ad tag */
	__u64 drop_ipv6;          /* IPv6 that is, or may be, TCP (the mesh carries IPv4 only) */
	__u64 forged_mark;        /* SYNs carrying agent_mark from a socket not the agent's: captured */
};

/* An enrolled pod of this node: where its agent listeners sit in mesh_listeners. */
struct mesh_pod {
	__u32 outbound_slot;
	__u32 inbound_slot;
};

/* A connection's addresses as the pod's stack receives it; network byte order. */
struct mesh_tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

/* Maps: named mesh_*, at most 15 characters (the kernel keeps 16 bytes with the NUL).
 * bcc rewrites map calls (mesh_config.lookup) only in a program's own file and
 * never through a macro, so each program looks its maps up itself. */
BPF_ARRAY(mesh_config, struct mesh_config, 1);
BPF_PERCPU_ARRAY(mesh_counters, struct mesh_counters, 1);
BPF_HASH(mesh_pods, __u32, struct mesh_pod, 1024);           /* key: pod IPv4, network order */
BPF_TABLE("lru_hash", struct mesh_tuple, __u32, mesh_captured, 65536);  /* value: listener slot */
BPF_TABLE("sockmap", __u32, int, mesh_listeners, 2048);     /* slot -> agent listener */
/* The agent's own outbound sockets in pods (key: socket cookie): only their SYNs may carry
 * agent_mark past capture. A mark alone proves nothing: CAP_NET_RAW, which containers get
 * by default, may set any SO_MARK (Linux >= 5.17). Cookies are never reused; LRU evicts
 * sockets long past their SYN. */
BPF_TABLE("lru_hash", __u64, __u8, mesh_own_socks, 65536);

struct mesh_packet {
	struct mesh_tuple tuple;
	int syn;                      /* a SYN without ACK: a new connection */
	int drop;                     /* MESH_DROP: why (MESH_WHY_*) */
};

/* What mesh_parse found. */
#define MESH_PASS 0               /* not TCP, and nothing that could hide TCP: not ours */
#define MESH_TCP 1                /* IPv4 TCP: pkt->tuple and pkt->syn are filled */
#define MESH_DROP 2               /* may be TCP that capture cannot see whole: drop it */

#define MESH_WHY_FRAGMENT 1
#define MESH_WHY_MALFORMED 2
#define MESH_WHY_VLAN 3
#define MESH_WHY_IPV6 4

#define MESH_IPV6_EXT_MAX 8       /* extension headers followed before giving up (drop) */

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

static __always_inline int mesh_drop(struct mesh_packet *pkt, int why)
{
	pkt->drop = why;
	return MESH_DROP;
}

/* IPv6: the mesh does not carry it, so IPv6 TCP must not pass an enrolled pod's eth0
 * either way (it would reach the app, or leave it, around the mesh). Walks the extension
 * headers the kernel itself walks; drops TCP, and whatever it cannot follow to its end. */
static __always_inline int mesh_parse6(struct __sk_buff *skb, struct mesh_packet *pkt)
{
	struct ipv6hdr ip6;
	__u8 ext[2];                  /* next header, length */
	__u16 frag_off;
	__u32 off = ETH_HLEN + sizeof(ip6);
	__u8 next;
	int i;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
		return mesh_drop(pkt, MESH_WHY_IPV6);
	next = ip6.nexthdr;
#pragma unroll
	for (i = 0; i < MESH_IPV6_EXT_MAX; i++) {
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_AH:
		case IPPROTO_FRAGMENT:
			break;
		case IPPROTO_TCP:
			return mesh_drop(pkt, MESH_WHY_IPV6);
		default:          /* ICMPv6 (neighbour discovery), UDP, ESP, no next header... */
			return MESH_PASS;
		}
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return mesh_drop(pkt, MESH_WHY_IPV6);
		if (next == IPPROTO_FRAGMENT) {
			/* A later fragment's first header may be another extension header, whose
			 * next header only the first fragment holds: follow first fragments only. */
			if (bpf_skb_load_bytes(skb, off + 2, &frag_off, sizeof(frag_off)) < 0)
				return mesh_drop(pkt, MESH_WHY_IPV6);
			if ((frag_off & bpf_htons(0xfff8)) && ext[0] != IPPROTO_UDP &&
			    ext[0] != IPPROTO_ICMPV6)
				return mesh_drop(pkt, MESH_WHY_IPV6);
			off += 8;
		} else if (next == IPPROTO_AH) {
			off += (ext[1] + 2) * 4;
		} else {
			off += (ext[1] + 1) * 8;
		}
		next = ext[0];
	}
	return mesh_drop(pkt, MESH_WHY_IPV6);
}

/* An IPv4 header's verdict: MESH_PASS, MESH_DROP (pkt->drop says why), or MESH_TCP: then
 * the TCP header starts *ihl bytes after the IP header and must be read. */
static __always_inline int mesh_ipv4(const struct iphdr *ip, struct mesh_packet *pkt, __u32 *ihl)
{
	/* The kernel reassembles only fragments of one protocol, so no fragment of another
	 * protocol can become TCP. */
	if (ip->protocol != IPPROTO_TCP)
		return MESH_PASS;
	if (ip->frag_off & bpf_htons(0x3fff))    /* more fragments, or not the first */
		return mesh_drop(pkt, MESH_WHY_FRAGMENT);
	*ihl = ip->ihl * 4;
	if (*ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < *ihl + sizeof(struct tcphdr))
		return mesh_drop(pkt, MESH_WHY_MALFORMED);
	return MESH_TCP;
}

static __always_inline int mesh_tcp(const struct iphdr *ip, const struct tcphdr *tcp,
				    struct mesh_packet *pkt)
{
	pkt->tuple.saddr = ip->saddr;
	pkt->tuple.daddr = ip->daddr;
	pkt->tuple.sport = tcp->source;
	pkt->tuple.dport = tcp->dest;
	pkt->syn = tcp->syn && !tcp->ack;
	return MESH_TCP;
}

/* Classify a frame at a pod's eth0 (either way) as the kernel will read it.
 *
 * Capture must see every TCP packet the pod's stack (or its peer's) will act on, so what
 * could be TCP but cannot be read whole is dropped, never passed: IPv4 fragments (tc runs
 * before reassembly, and a first fragment can stop before the TCP flags), headers that do
 * not fit the packet, frames still tagged 802.1Q/802.1ad (a priority tag, VLAN 0, is
 * stripped by the receiver and the packet delivered as untagged), and IPv6 TCP.
 *
 * IPv4 headers in the linear part of the packet (nearly always) are read in place; anything
 * else is copied with bpf_skb_load_bytes, so IPv4 options (IHL > 5) and headers outside the
 * linear part are read like any other, and only a packet too short for them is "cannot". */
static __always_inline int mesh_parse(struct __sk_buff *skb, struct mesh_packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct ethhdr ethc;
	struct iphdr ipc;
	struct tcphdr tcpc;
	__u32 ihl = 0;
	int kind;

	if ((void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct tcphdr *tcp;

		kind = mesh_ipv4(ip, pkt, &ihl);
		if (kind != MESH_TCP)
			return kind;
		ihl &= 0x3c;              /* bounds the offset for the verifier (it is <= 60) */
		tcp = (void *)ip + ihl;
		if ((void *)(tcp + 1) <= end)
			return mesh_tcp(ip, tcp, pkt);
		if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &tcpc, sizeof(tcpc)) < 0)
			return mesh_drop(pkt, MESH_WHY_MALFORMED);
		return mesh_tcp(ip, &tcpc, pkt);
	}
	if (bpf_skb_load_bytes(skb, 0, &ethc, sizeof(ethc)) < 0)
		return MESH_PASS;         /* shorter than an Ethernet header: nothing to deliver */
	if (ethc.h_proto == bpf_htons(ETH_P_8021Q) || ethc.h_proto == bpf_htons(ETH_P_8021AD))
		return mesh_drop(pkt, MESH_WHY_VLAN);
	if (ethc.h_proto == bpf_htons(ETH_P_IPV6))
		return mesh_parse6(skb, pkt);
	if (ethc.h_proto != bpf_htons(ETH_P_IP))
		return MESH_PASS;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ipc, sizeof(ipc)) < 0)
		return mesh_drop(pkt, MESH_WHY_MALFORMED);
	kind = mesh_ipv4(&ipc, pkt, &ihl);
	if (kind != MESH_TCP)
		return kind;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &tcpc, sizeof(tcpc)) < 0)
		return mesh_drop(pkt, MESH_WHY_MALFORMED);
	return mesh_tcp(&ipc, &tcpc, pkt);
}

/* Count a MESH_DROP by its reason. */
static __always_inline void mesh_count_drop(struct mesh_counters *cnt, int why)
{
	if (!cnt)
		return;
	if (why == MESH_WHY_FRAGMENT)
		__sync_fetch_and_add(&cnt->drop_fragment, 1);
	else if (why == MESH_WHY_VLAN)
		__sync_fetch_and_add(&cnt->drop_vlan, 1);
	else if (why == MESH_WHY_IPV6)
		__sync_fetch_and_add(&cnt->drop_ipv6, 1);
	else
		__sync_fetch_and_add(&cnt->drop_malformed, 1);
}

#endif /* SLIPSTREAM_MESH_H */
