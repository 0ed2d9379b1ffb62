/* Everything the capture programs share with each other and with Python.
 *
 * The one Python mirror is agent/datapath/abi.py; the agent compares it with the
 * compiled program's types at load and refuses to run on any difference, so a
 * field added here must be added there too (same name, same order).
 *
 * Values (ports, marks) are not compiled in: Python writes them into
 * mesh_config at load, so they have a single definition, on the Python side.
 *
 * How a captured connection reaches the agent, without NAT:
 *   tc egress (eth0)  marks outbound TCP and redirects it to lo ingress;
 *   ip rule           routes marked packets to table 100: local delivery;
 *   tc ingress (lo)   tags each captured outbound SYN's tuple in mesh_captured;
 *   tc ingress (eth0) tags each new inbound SYN the same way;
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

struct mesh_packet {
	struct mesh_tuple tuple;
	int syn;                      /* a SYN without ACK: a new connection */
};

/* Parse an Ethernet/IPv4/TCP packet. Returns 0 if it is one, -1 otherwise.
 * IPv4 options are allowed; fragments are not ours (TCP does not fragment here). */
static __always_inline int mesh_parse(struct __sk_buff *skb, struct mesh_packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1;
	tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end)
		return -1;
	pkt->tuple.saddr = ip->saddr;
	pkt->tuple.daddr = ip->daddr;
	pkt->tuple.sport = tcp->source;
	pkt->tuple.dport = tcp->dest;
	pkt->syn = tcp->syn && !tcp->ack;
	return 0;
}

#endif /* SLIPSTREAM_MESH_H */
