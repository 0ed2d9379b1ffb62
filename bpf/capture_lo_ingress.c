/* capture_lo_ingress: tc ingress (clsact, direct action) on a pod's lo.
 *
 * Receives what capture_egress redirected (capture_mark set) and assigns it to
 * an agent socket with bpf_sk_assign; everything else on lo passes untouched.
 * First the socket of the packet's own connection; for a SYN with none, the
 * outbound listener (the same tuple with the port replaced). The accepted
 * socket's getsockname() is then the original destination.
 *
 * A SYN ignores TIME_WAIT entries (a client may reuse a port the agent still
 * holds in TIME_WAIT) and listeners of the original port (a pod app listening
 * on the same port number must not receive its own outbound connection).
 *
 * Fail closed: no agent listener means the SYN is dropped, never sent on.
 *
 * Maps: reads mesh_config; writes mesh_counters.
 * Returns: TC_ACT_OK (assigned, or not ours), TC_ACT_SHOT (no agent socket).
 */
#include "mesh.h"

int capture_lo_ingress(struct __sk_buff *skb)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_packet pkt = {};
	struct bpf_sock *sk;

	if (!cfg || skb->mark != cfg->capture_mark)
		return TC_ACT_OK;
	if (mesh_parse(skb, &pkt) < 0)
		return TC_ACT_OK;
	sk = bpf_skc_lookup_tcp(skb, &pkt.tuple, sizeof(pkt.tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN && !(pkt.syn && sk->state == BPF_TCP_TIME_WAIT)) {
			long err = bpf_sk_assign(skb, sk, 0);

			bpf_sk_release(sk);
			return err == 0 ? TC_ACT_OK : TC_ACT_SHOT;
		}
		bpf_sk_release(sk);
	}
	cnt = mesh_counters.lookup(&zero);
	if (!pkt.syn) {
		if (cnt)
			__sync_fetch_and_add(&cnt->orphan_dropped, 1);
		return TC_ACT_SHOT;
	}
	return mesh_assign_listener(skb, pkt.tuple, cfg->outbound_port, cnt);
}
