/* capture_ingress: tc ingress (clsact, direct action) on a pod's eth0.
 *
 * New inbound plaintext connections (a SYN to any port but hbone_port) are
 * assigned to the agent's inbound listener (15006); the accepted socket's
 * getsockname() is the port the client asked for. Later packets need no help:
 * the kernel finds the accepted socket by its exact tuple, as it finds the
 * pod's own connections and the replies to the agent's outbound sockets.
 * HBONE (hbone_port) goes straight to the agent's 15008 listener.
 *
 * Fail closed: a SYN is dropped while the agent is not listening.
 *
 * Maps: reads mesh_config; writes mesh_counters.
 * Returns: TC_ACT_OK (assigned, or not a new connection), TC_ACT_SHOT (no agent).
 */
#include "mesh.h"

int capture_ingress(struct __sk_buff *skb)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_packet pkt = {};

	if (!cfg || mesh_parse(skb, &pkt) < 0)
		return TC_ACT_OK;
	if (!pkt.syn || pkt.tuple.ipv4.dport == bpf_htons(cfg->hbone_port))
		return TC_ACT_OK;
	cnt = mesh_counters.lookup(&zero);
	if (cnt)
		__sync_fetch_and_add(&cnt->inbound_new, 1);
	return mesh_assign_listener(skb, pkt.tuple, cfg->inbound_port, cnt);
}
