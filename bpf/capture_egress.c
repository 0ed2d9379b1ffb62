/* capture_egress: tc egress (clsact, direct action) on a pod's eth0.
 *
 * Sends the pod's outbound TCP to the agent without NAT: the packet is marked
 * with capture_mark, its destination MAC zeroed (lo only takes packets for
 * itself) and redirected to the ingress of the pod's lo. There the capture
 * mark routes it to local delivery and the kernel finds the agent's socket.
 *
 * Captured: every SYN that opens a connection, and every other packet of a
 * connection whose far end is an agent socket (the reverse tuple finds it).
 * Not captured: the agent's own packets (agent_mark on a socket the agent
 * registered in mesh_own_socks: any container with CAP_NET_RAW may set the
 * mark), non-TCP, and packets of connections opened before the pod was
 * enrolled, which run to their end as they began.
 * Dropped: what could be TCP that capture cannot read whole (mesh_parse: IPv4
 * fragments, truncated headers, VLAN-tagged frames, IPv6 TCP), so it never
 * leaves the pod around the mesh.
 *
 * Maps: reads mesh_config, mesh_own_socks; writes mesh_counters.
 * Returns: TC_ACT_OK (leave the packet alone), TC_ACT_SHOT (dropped, counted
 * by reason), or the bpf_redirect verdict.
 */
#include "mesh.h"

int capture_egress(struct __sk_buff *skb)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_packet pkt = {};
	__u8 zero_mac[ETH_ALEN] = {};
	int kind;

	if (!cfg)
		return TC_ACT_OK;
	kind = mesh_parse(skb, &pkt);
	if (kind == MESH_DROP) {
		mesh_count_drop(mesh_counters.lookup(&zero), pkt.drop);
		return TC_ACT_SHOT;
	}
	if (kind != MESH_TCP)
		return TC_ACT_OK;
	if (skb->mark == cfg->agent_mark) {
		__u64 cookie = bpf_get_socket_cookie(skb);

		if (cookie && mesh_own_socks.lookup(&cookie))
			return TC_ACT_OK;
		/* Any socket may carry the mark: one the agent did not register is treated
		 * as the pod's own below (the agent's accepted sockets, never registered, are
		 * found to be no captured connection's and pass). */
		if (pkt.syn) {
			cnt = mesh_counters.lookup(&zero);
			if (cnt)
				__sync_fetch_and_add(&cnt->forged_mark, 1);
		}
	}
	if (!pkt.syn) {
		struct bpf_sock_tuple t = {};
		struct bpf_sock *sk;
		int ours;

		t.ipv4.saddr = pkt.tuple.saddr;
		t.ipv4.daddr = pkt.tuple.daddr;
		t.ipv4.sport = pkt.tuple.sport;
		t.ipv4.dport = pkt.tuple.dport;
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return TC_ACT_OK;
		/* A listener matches any address; only a connection's own socket is the agent's. */
		ours = sk->state != BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		if (!ours)
			return TC_ACT_OK;
	}
	cnt = mesh_counters.lookup(&zero);
	if (cnt) {
		__sync_fetch_and_add(&cnt->outbound_packets, 1);
		if (pkt.syn)
			__sync_fetch_and_add(&cnt->outbound_new, 1);
	}
	skb->mark = cfg->capture_mark;
	if (bpf_skb_store_bytes(skb, 0, zero_mac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->lo_ifindex, BPF_F_INGRESS);
}
