"""Sequence packing: documents laid end to end into fixed [batch, seq_len] rows with segment ids.

Row layout (all int32 / float32 numpy arrays of shape [batch, seq_len]):
  tokens       token ids, 0 in padding
  segment_ids  1, 2, 3, ... per document piece within the row; 0 marks padding
  positions    position of each token within its document (continues across a split)
  loss_mask    1.0 where the token is a prediction target (the document's loss_mask), else 0.0
The next-token target of position t is token t + 1 when both lie in the same segment (see
m1jax.train.loss), so targets never cross documents.
"""

from __future__ import annotations

import numpy as np

# A source returning nothing but empty documents would otherwise spin forever.
_MAX_EMPTY_IN_A_ROW = 10_000


def pack_batch(source, doc: int, offset: int, batch: int, seq_len: int, *, split_documents: bool = True):
    """Pack rows starting at document ``doc``, token ``offset``; returns (arrays, (doc, offset) after).

    split_documents=True: a document that does not fit the row's remaining space fills it and continues
    at the start of the next row (positions continuing). False: it starts a new row instead (the
    remainder is padding); a document longer than a whole row is then truncated to ``seq_len``.
    """
    out = {k: np.zeros((batch, seq_len), np.int32) for k in ("tokens", "segment_ids", "positions")}
    out["loss_mask"] = np.zeros((batch, seq_len), np.float32)
    doc, offset = int(doc), int(offset)
    for row in range(batch):
        cursor, seg, empty = 0, 0, 0
        while cursor < seq_len:
            d = source[doc]
            rest = len(d) - offset
            if rest <= 0:
                doc, offset, empty = doc + 1, 0, empty + 1
                if empty > _MAX_EMPTY_IN_A_ROW:
                    raise ValueError(f"{_MAX_EMPTY_IN_A_ROW} empty documents in a row from {source!r}")
                continue
            empty = 0
            space = seq_len - cursor
            if rest > space and not split_documents and cursor > 0:
                break  # starts the next row
            take = min(rest, space)
            seg += 1
            sl = slice(cursor, cursor + take)
            out["tokens"][row, sl] = d.tokens[offset : offset + take]
            out["segment_ids"][row, sl] = seg
            out["positions"][row, sl] = np.arange(offset, offset + take)
            mask = d.loss_mask
            out["loss_mask"][row, sl] = 1.0 if mask is None else mask[offset : offset + take]
            cursor += take
            if take == rest or not split_documents:  # done with it (or truncated)
                doc, offset = doc + 1, 0
            else:
                offset += take
    return out, (doc, offset)
