"""The 2D rotary position embedding of the HunyuanImage-3 trunk.

Every token has a (y, x) position. Text tokens sit on the diagonal, y = x = their index n. An image block of
h x w tokens that starts at index L takes the h * w indices after it and lays its grid in the middle of that span:

    y = L + (h*w - h) // 2 + i,    x = L + (h*w - w) // 2 + j      (row i, column j; row-major in the sequence)

(the release computes these in float32 and truncates to integers, which is the floor division above), and the
text after the block resumes at L + h*w. Per head, frequency k (of head_dim / 2) turns by y * f_k for even k and
x * f_k for odd k (y and x interleaved), f_k = theta^(-2k / head_dim); cos / sin repeat that half twice and are
applied with rotate-half, as the release does.
"""
import torch


def rope_positions(seq_len, blocks=()):
    """(seq_len, 2) int64 (y, x) positions of a sequence whose image blocks are `blocks`: (start, height, width)
    in token units, in sequence order.

    Follows the release's arithmetic exactly, including its edge cases: text fills the gap before each block,
    a block that starts before the previous one's span ends gets no text and its positions are appended anyway,
    and the table is cut at `seq_len` (an overlap shifts what follows, as in the release). A block must end by
    `seq_len`."""
    ys, xs = [], []
    cursor = 0
    for start, height, width in blocks:
        if cursor < start:
            text = torch.arange(cursor, start)
            ys.append(text)
            xs.append(text)
        area = height * width
        rows = torch.arange(height).repeat_interleave(width)
        cols = torch.arange(width).repeat(height)
        ys.append(start + (area - height) // 2 + rows)
        xs.append(start + (area - width) // 2 + cols)
        cursor = start + area
    if cursor > seq_len:
        raise ValueError(f"an image block ends at token {cursor}, past the sequence length {seq_len}")
    text = torch.arange(cursor, seq_len)
    ys.append(text)
    xs.append(text)
    return torch.stack([torch.cat(ys)[:seq_len], torch.cat(xs)[:seq_len]], dim=-1)


def rope_cos_sin(positions, head_dim, theta=10000.0):
    """(..., 2) int64 (y, x) positions -> cos, sin, each (..., head_dim) float32.

    Index any leading shape: a (S, 2) table gives (S, head_dim), a (B, Q, 2) selection gives (B, Q, head_dim)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = (positions.unsqueeze(-2) * freqs.view(head_dim // 4, 2)).flatten(-2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate (B, heads, Q, head_dim) by cos / sin of shape (B, Q, head_dim) or (Q, head_dim).

    The result takes the promoted dtype of x and cos (float32 tables lift bf16 heads to float32, as in the
    release, where the per-head norm that follows also runs in float32)."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    return x * cos + rotate_half(x) * sin
