/* capture_lo_ingress: tc ingress (clsact, direct action) on a pod's lo.
 *
 * Sees what capture_egress redirected (capture_mark set); everything else on
 * lo passes untouched. For a captured SYN it records the tuple in
 * mesh_captured with the slot of the pod's outbound listener, so that
 * capture_lookup (sk_lookup) hands the connection to that listener. Packets
 * of established connections need nothing: the kernel finds the agent's
 * socket by their exact tuple.
 *
 * Fail closed: a captured SYN is dropped while the agent has no outbound
 * listener for the pod (agent down or restarting), never sent on.
 *
 * Maps: reads mesh_config, mesh_pods, mesh_listeners; writes mesh_captured,
 * mesh_counters.
 * Returns: TC_ACT_OK (deliver locally), TC_ACT_SHOT (no agent to deliver to).
 */
#include "mesh.h"

int capture_lo_ingress(struct __sk_buff *skb)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_packet pkt = {};
	struct mesh_pod *pod;
	struct bpf_sock *sk;
	__u32 slot;

	if (!cfg || skb->mark != cfg->capture_mark)
		return TC_ACT_OK;
	if (mesh_parse(skb, &pkt) != MESH_TCP || !pkt.syn)
		return TC_ACT_OK;
	pod = mesh_pods.lookup(&pkt.tuple.saddr);
	sk = NULL;
	if (pod) {
		slot = pod->outbound_slot;
		sk = (struct bpf_sock *)mesh_listeners.lookup(&slot);
	}
	if (!sk) {
		cnt = mesh_counters.lookup(&zero);
		if (cnt)
			__sync_fetch_and_add(&cnt->no_listener, 1);
		return TC_ACT_SHOT;
	}
	bpf_sk_release(sk);
	mesh_captured.update(&pkt.tuple, &slot);
	return TC_ACT_OK;
}
