import { NodeId } from './types';

/** Majority quorum math over a set of voters (learners never appear here). */

export function quorumSize(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}

/**
 * The largest index that a majority of voters have matched. 0 for an empty voter set
 * (nothing can commit without voters).
 */
export function committedIndex(voters: readonly NodeId[], matchOf: (id: NodeId) => number): number {
  if (voters.length === 0) return 0;
  const matched = voters.map(matchOf).sort((a, b) => b - a);
  return matched[quorumSize(voters.length) - 1];
}

export type VoteResult = 'won' | 'lost' | 'pending';

/** Tally of votes (true = granted) cast by voters; other nodes' votes are ignored. */
export function voteResult(
  voters: readonly NodeId[],
  votes: ReadonlyMap<NodeId, boolean>,
): VoteResult {
  const q = quorumSize(voters.length);
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const v = votes.get(id);
    if (v === undefined) missing++;
    else if (v) granted++;
  }
  if (granted >= q) return 'won';
  if (granted + missing >= q) return 'pending';
  return 'lost';
}
