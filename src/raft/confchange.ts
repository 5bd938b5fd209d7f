import { ConfChange, ConfChangeType, ConfState, NodeId } from './types';

/**
 * Single-server membership changes. A ConfChange entry takes effect on a node when the host
 * APPLIES it (RawNode.applyConfChange), as in etcd: until then every node keeps using the
 * configuration as of its applied index. Safety of apply-time changes rests on two leader
 * rules enforced in raft.ts: at most one unapplied conf change in the log, and none proposed
 * before the leader has applied an entry of its own term.
 *
 * Operational caveat (as in etcd): removing one of TWO voters can stall the cluster if the
 * removed node is the leader and it stops (crash, shutdown) after applying its removal but
 * before the survivor learned that the removal committed: the survivor still needs the removed
 * node's vote under the old configuration, and the removed node refuses it while its log is
 * longer. The removed leader hands leadership off (see Raft.applyConfChange) to make this
 * unlikely; to shrink 2 -> 1 safely, remove the follower from the leader, or transfer leadership
 * away from the node to be removed first.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Entry.data of a ConfChange entry: one type byte, then the node id in UTF-8. */
export function encodeConfChange(cc: ConfChange): Uint8Array {
  const id = encoder.encode(cc.node);
  const out = new Uint8Array(1 + id.length);
  out[0] = cc.type;
  out.set(id, 1);
  return out;
}

export function decodeConfChange(data: Uint8Array): ConfChange {
  if (data.length < 2 || data[0] > ConfChangeType.AddVoter) {
    throw new RangeError(`malformed conf change (${data.length} bytes)`);
  }
  return { type: data[0] as ConfChangeType, node: decoder.decode(data.subarray(1)) };
}

/** Why cc cannot be applied to conf, or undefined when it can. */
export function confChangeProblem(conf: ConfState, cc: ConfChange): string | undefined {
  if (cc.node === '') return 'empty node id';
  const voter = conf.voters.includes(cc.node);
  const learner = conf.learners.includes(cc.node);
  switch (cc.type) {
    case ConfChangeType.AddLearner:
      return voter ? `${cc.node} is a voter (demotion is not supported)` : undefined;
    case ConfChangeType.PromoteLearner:
      return learner ? undefined : `${cc.node} is not a learner`;
    case ConfChangeType.AddVoter:
      return undefined;
    case ConfChangeType.RemoveNode:
      if (!voter && !learner) return `${cc.node} is not a member`;
      if (voter && conf.voters.length === 1) return 'cannot remove the last voter';
      return undefined;
    default:
      return `unknown conf change type ${String(cc.type)}`;
  }
}

/** The configuration after cc. Requires confChangeProblem(conf, cc) === undefined. */
export function applyToConf(conf: ConfState, cc: ConfChange): ConfState {
  const without = (ids: NodeId[]) => ids.filter((id) => id !== cc.node);
  switch (cc.type) {
    case ConfChangeType.AddLearner:
      return conf.learners.includes(cc.node)
        ? copy(conf)
        : { voters: [...conf.voters], learners: [...conf.learners, cc.node] };
    case ConfChangeType.PromoteLearner:
    case ConfChangeType.AddVoter:
      return conf.voters.includes(cc.node)
        ? copy(conf)
        : { voters: [...conf.voters, cc.node], learners: without(conf.learners) };
    case ConfChangeType.RemoveNode:
      return { voters: without(conf.voters), learners: without(conf.learners) };
  }
}

function copy(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners] };
}
