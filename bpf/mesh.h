/* Everything the capture programs share with each other and with Python.
 *
 * The one Python mirror is agent/datapath/abi.py; the agent compares it with the
 * compiled program's types at load and refuses to run on any difference, so a
 * field added here must be added there too (same name, same order).
 *
 * Values (ports, marks) are not compiled in: Python writes them into
 * mesh_config at load, so they have a single definition, on the Python side.
 */
#ifndef SLIPSTREAM_MESH_H
#define SLIPSTREAM_MESH_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

/* Maps: named mesh_*, at most 15 characters (the kernel keeps 16 bytes with the NUL).
 * bcc rewrites map calls (mesh_config.lookup) only in a program's own file and
 * never through a macro, so each program looks its maps up itself. */

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
	__u64 inbound_new;        /* inbound SYNs assigned to the agent's 15006 listener */
	__u64 no_listener;        /* SYNs dropped because the agent was not listening (fail closed) */
	__u64 orphan_dropped;     /* captured non-SYN packets with no agent socket, dropped */
};

BPF_ARRAY(mesh_config, struct mesh_config, 1);
BPF_PERCPU_ARRAY(mesh_counters, struct mesh_counters, 1);

struct mesh_packet {
	struct bpf_sock_tuple tuple;  /* network byte order, as on the wire */
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
	pkt->tuple.ipv4.saddr = ip->saddr;
	pkt->tuple.ipv4.daddr = ip->daddr;
	pkt->tuple.ipv4.sport = tcp->source;
	pkt->tuple.ipv4.dport = tcp->dest;
	pkt->syn = tcp->syn && !tcp->ack;
	return 0;
}

/* Assign the packet to the listener on `port` (same addresses, port replaced).
 * Returns TC_ACT_OK when assigned, TC_ACT_SHOT when the agent is not listening. */
static __always_inline int mesh_assign_listener(struct __sk_buff *skb, struct bpf_sock_tuple tuple,
						__u16 port, struct mesh_counters *cnt)
{
	struct bpf_sock *sk;
	long err;

	tuple.ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk) {
		if (cnt)
			__sync_fetch_and_add(&cnt->no_listener, 1);
		return TC_ACT_SHOT;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err == 0 ? TC_ACT_OK : TC_ACT_SHOT;
}

#endif /* SLIPSTREAM_MESH_H */
