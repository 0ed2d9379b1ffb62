/* capture_lookup: sk_lookup, attached to each enrolled pod's network namespace.
 *
 * Runs inside the kernel's listener lookup, before the pod's own listeners.
 * A tuple that capture_lo_ingress (outbound) or capture_ingress (inbound)
 * tagged goes to the agent listener whose slot the tag names (15001 or
 * 15006); the tag is used once. Anything else is left to the ordinary lookup:
 * the pod's own sockets, loopback, the agent delivering to the app, HBONE.
 * Because this is the listener lookup, the kernel's TIME_WAIT logic calls it
 * too when a SYN reuses a tuple in TIME_WAIT, and the new connection wins.
 *
 * Only tags decide, never the arriving interface: the agent's own connection
 * to the app (from the client's address) must not look like an inbound one.
 *
 * Maps: reads mesh_config, mesh_listeners, mesh_captured; deletes used tags
 * from mesh_captured; writes mesh_counters.
 * Returns: SK_PASS (with or without a socket selected), SK_DROP when the
 * agent's listener is gone (the connection is refused).
 */
#include "mesh.h"

int capture_lookup(struct bpf_sk_lookup *ctx)
{
	int zero = 0;
	struct mesh_config *cfg = mesh_config.lookup(&zero);
	struct mesh_counters *cnt;
	struct mesh_tuple key = {};
	struct bpf_sock *sk;
	__u32 *tagged;
	__u32 slot;
	long err;

	if (!cfg || ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	key.saddr = ctx->remote_ip4;
	key.daddr = ctx->local_ip4;
	key.sport = (__u16)ctx->remote_port;
	key.dport = bpf_htons((__u16)ctx->local_port);
	tagged = mesh_captured.lookup(&key);
	if (!tagged)
		return SK_PASS;
	slot = *tagged;
	mesh_captured.delete(&key);
	sk = (struct bpf_sock *)mesh_listeners.lookup(&slot);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return SK_DROP;
	cnt = mesh_counters.lookup(&zero);
	if (cnt)
		__sync_fetch_and_add(&cnt->assigned, 1);
	return SK_PASS;
}
