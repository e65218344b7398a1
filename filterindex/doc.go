// Package filterindex finds, for one event, the owners of every subscription
// whose Filter matches it, without evaluating every subscription.
//
// # Ownership and concurrency
//
// An Index is not safe for concurrent use, by design. The engine's dispatcher
// goroutine owns it outright: it calls Match for each event and applies every
// subscribe (Add) and unsubscribe (Remove) itself, between two events, after
// receiving them through its command queue. Other goroutines never touch the
// Index; they only enqueue commands. That is how subscribing and unsubscribing
// are safe while the dispatcher matches, with no lock on the hot path.
//
// Filters belong to the engine. Add copies what it needs out of the Filter
// (sharing its strings, which are immutable) and keeps no pointer to it, so
// the engine may reuse or discard a Filter once Add returns.
//
// # Counting
//
// Each subscription occupies a dense slot. Each (field, value) pair listed by
// some filter, and each label (key, value) pair, owns a posting list of the
// subscriptions that list it. A subscription's predicate count k is its
// number of non-empty fields plus its number of label pairs (less those
// checked instead of counted, see below). To match an event,
// Match walks the posting lists of the event's own values and counts, per
// slot, the predicates satisfied; a slot matches when its count reaches k. A
// field counts at most once per slot even when several of the event's values
// hit it (Resources is multi-valued). Subscriptions with no predicate sit in
// a match-all list. Fields a subscription leaves empty never make an event
// touch it, so the cost of Match grows with the number of matching and
// partially matching subscriptions, not with the size of the index.
//
// Slot counters carry the number (epoch) of the Match call that last wrote
// them, so nothing is cleared between events: a stale epoch reads as zero.
// Owners already reported are marked in a bit set (small enough to stay in
// cache even with millions of owners) that Match clears before returning, by
// walking the owners it has just appended.
//
// # Enumerated fields are checked, not counted
//
// Plain counting has one bad case, and it is the common one in incident
// management: a narrow predicate AND-ed with a broad one, such as "resource
// db-1 at P0 or P1". Counted, that subscription sits on the P0 and P1 lists,
// so every P1 event touches it, and with many such subscriptions Match
// degrades towards a scan. But EventTypes, Severities and States draw from
// closed vocabularies (event.Types, event.Severities, event.States) small
// enough to be bit sets. So a subscription that has any other predicate is
// posted only under those and keeps its enumerated fields as a 32-bit reject
// mask; once its count reaches k, one AND against the event's bits decides.
// A subscription whose only predicates are enumerated is posted under the
// most selective of them (relative to its vocabulary) and checks the rest by
// mask. An enumerated list holding a value outside the vocabulary (which the
// codec does not let through) is simply counted like any other field.
//
// # Broad values are checked, not counted
//
// The same holds for open fields and labels whose values turn out to be
// broad: {team: payments, env: prod} counted would sit on the env=prod list
// and be touched by half of all events. So when Add finds that the posting
// lists of a predicate's values already hold defaultBroad (256) or more
// subscriptions, it does not post the new subscription there; it posts it
// under its other, narrower predicates only, and Match checks the broad ones
// directly against the event once the count is reached. A subscription made
// only of broad predicates is posted under the lightest of them. Broad lists
// thus stop growing with subscriptions that have something narrower to
// offer, which is what keeps Match's cost tied to near matches. The choice
// is made once, at Add; a value that becomes popular later keeps the
// subscriptions it already has. A slot counts at most 32,767 predicates; a
// filter with more (label pairs are one predicate each) is posted under the
// lightest 32,767 and the rest are checked the same way.
//
// # Subscriptions with one predicate skip the counter
//
// Most subscriptions have k = 1 (an incident, a few resources, a team) and
// nothing checked. Their posting entries carry the owner and the reject mask
// themselves, so Match decides them from the posting list alone, read
// sequentially, and never touches their slot; only the others pay a random
// access to their counter. That keeps the cost per event nearly flat from
// thousands to millions of subscriptions, where the slot array no longer
// fits in cache.
//
// So do most subscriptions with two open predicates, such as {team: X,
// service: Y} or a label checked because it is broad: when one of the two is
// a single posting (a label pair, or a field listing one value), the
// subscription is posted under the other only, and its entries name that
// single posting as well (a paired entry). Match knows which postings the
// event's own values selected (it has just looked them up), so it decides a
// paired entry by comparing posting ids, with no slot and no check against
// the event; and the single posting's list no longer holds the subscription.
// If both are single, the lighter is posted. Match leaves the entries it
// cannot decide alone (paired and counted) to a second pass, which keeps
// its loop over the lists tight and lets it load the counted ones' slots
// together, so that their cache misses overlap.
//
// # Looking values up
//
// Postings are filed in a dict (dict.go), an open-addressing table keyed by
// (field, value) and (label key, value), rather than in Go maps: a map
// lookup in a large index costs a cache miss on the group's control word,
// often one on the slot and one on the key's bytes, which live with the
// filter that first listed the value. A dict slot is 32 bytes and holds the
// key itself when key and value together take at most 21 bytes, so a lookup
// usually costs one miss. Match hashes all the event's values and loads
// their slots first, then finds their postings, then loads the lists'
// headers (Index.lists, kept apart from the keys so that they take 24 bytes
// each), then the first cache lines of every list, and only then walks
// them: each step's misses are independent and overlap. Values of the
// enumerated fields that have a bit skip the dict (Index.enumPids). At a
// million subscriptions, where the index no longer fits in cache, these
// misses are most of what Match costs.
//
// # Posting lists: slices, not roaring bitmaps
//
// A posting list is a plain slice of 12-byte entries in arbitrary order.
// Removal is O(1) per entry: each slot remembers its position in every list
// it is on, each entry (in a parallel array Match never reads) its slot and
// which of that slot's refs points at it, and Remove swaps the list's last
// entry into the hole and fixes that entry's ref. Roaring bitmaps of
// slot numbers were measured against this on the same postings (see
// BenchmarkPostings in roaring_test.go): Match only ever walks whole lists,
// never intersects them, which a flat slice does at memory speed while
// roaring pays per container and per iterator refill; nearly every list in an
// incident workload is short (one incident, one resource, one team), where a
// bitmap costs a heap object, a container and a key array, several times what
// its few entries cost in a slice; and a bitmap holds only slot numbers, so
// every hit would cost a random access to the slot that the entries above
// avoid. Roaring pays off for long dense lists, which the enumerated-field
// masks keep out of the index.
package filterindex
