/* capture_ingress: tc ingress (clsact, direct action) on a pod's eth0.
 *
 * New inbound plaintext connections (a SYN to any port but hbone_port) are
 * tagged in mesh_captured with the slot of the pod's inbound listener, and
 * capture_lookup gives them to it (15006); the accepted socket's getsockname()
 * is the port the client asked for. So is any other packet that no socket of
 * the pod expects (bpf_skc_lookup_tcp finds only a listener): the ACK of a SYN
 * cookie, which is valid for any listener of its tuple, must reach the agent's
 * listener that minted it, never the app's. Everything else passes: the
 * kernel finds established sockets, the pod's own connections, and the
 * replies to the agent's outbound sockets by their exact tuples.
 *
 * Fail closed: while the agent is down such a packet is dropped, so no
 * plaintext connection reaches the app around the mesh. So is what could be
 * TCP that capture cannot read whole (mesh_parse: IPv4 fragments, truncated
 * headers, VLAN-tagged frames, IPv6 TCP): the kernel would deliver it after
 * this program, a SYN included, without a tag.
 *
 * Maps: reads mesh_config, mesh_pods, mesh_listeners; writes mesh_captured,
 * mesh_counters.
 * Returns: TC_ACT_OK (pass), TC_ACT_SHOT (agent not listening, or dropped
 * unreadable, counted by reason).
 */
#include "mesh.h"

int capture_ingress(struct __sk_buff *skb)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_packet pkt = {};
	struct mesh_pod *pod;
	struct bpf_sock *sk = NULL;
	__u32 slot;
	int kind;

	if (!cfg)
		return TC_ACT_OK;
	kind = mesh_parse(skb, &pkt);
	if (kind == MESH_DROP) {
		mesh_count_drop(mesh_counters.lookup(&zero), pkt.drop);
		return TC_ACT_SHOT;
	}
	if (kind != MESH_TCP || pkt.tuple.dport == bpf_htons(cfg->hbone_port))
		return TC_ACT_OK;
	if (!pkt.syn) {
		struct bpf_sock_tuple t = {};
		struct bpf_sock *found;
		int listener;

		t.ipv4.saddr = pkt.tuple.saddr;
		t.ipv4.daddr = pkt.tuple.daddr;
		t.ipv4.sport = pkt.tuple.sport;
		t.ipv4.dport = pkt.tuple.dport;
		found = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!found)
			return TC_ACT_OK;     /* nobody listens: the kernel resets it */
		listener = found->state == BPF_TCP_LISTEN;
		bpf_sk_release(found);
		if (!listener)
			return TC_ACT_OK;     /* a connection of the pod's (or the agent's) */
	}
	cnt = mesh_counters.lookup(&zero);
	pod = mesh_pods.lookup(&pkt.tuple.daddr);
	if (pod) {
		slot = pod->inbound_slot;
		sk = (struct bpf_sock *)mesh_listeners.lookup(&slot);
	}
	if (!sk) {
		if (cnt)
			__sync_fetch_and_add(&cnt->no_listener, 1);
		return TC_ACT_SHOT;
	}
	bpf_sk_release(sk);
	mesh_captured.update(&pkt.tuple, &slot);
	if (cnt && pkt.syn)
		__sync_fetch_and_add(&cnt->inbound_new, 1);
	return TC_ACT_OK;
}
