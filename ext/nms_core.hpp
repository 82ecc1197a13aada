// Greedy NMS and cross-tile merge: compiled twin of edge/kernels/nms.py (the spec; read its
// docstring first). No Python here: ext/nms.cpp binds these functions.
//
// Speed comes from two things only; the arithmetic is the spec's, in the same order:
//  - ranking by a stable LSD radix sort on the score bits (ties keep input order);
//  - a hierarchical uniform grid of the kept boxes, one per class when classes are apart: level L
//    has cells of s0 * 2^L, s0 from the small box sizes; a kept box is stored in the (at most
//    2 x 2) cells it meets on the finest level whose cells are at least its size, so a candidate
//    finds every kept box it overlaps in the cells it meets itself on each level. Room for every
//    candidate is reserved in its cells up front (a counting sort), so a cell is one contiguous
//    run of entries in rank order; a candidate searches its own level first, where a duplicate
//    detection of the same object usually is. For IoU with t > 0 only levels of boxes of
//    comparable size are visited (IoU > t needs each side within a factor t of the other box's);
//    a large candidate first tries the level's kept boxes as a flat list in rank order, for as
//    long as its cell search would take. Dense tiled scenes stay near O(N log N); the worst case
//    (many large boxes that match nothing over many small ones, IoS or t = 0) degrades towards
//    the O(N * K) of the plain loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <vector>

namespace edge_nms {

// A box lives on the finest level whose cell side is at least its longer side, so it is stored
// in at most 2 x 2 cells of that level (3 on a rare rounding of the cell index).
// Level-0 cell side = the kSmallQuantile quantile of the box sides: every box then lives on a level
// whose cells are about its size (a median would leave the smaller half in cells up to many times
// their size, slow when sizes are mixed); the cell cap below bounds it from below.
constexpr int kSmallQuantile = 20;  // 1/20: the 5th percentile
// Level-0 cells at most kCellsPerBox per box (+ kMinCells): bounds memory and set-up time when the
// boxes are spread over a huge extent (each class has its own grid: keep kMinCells small).
constexpr double kCellsPerBox = 2.0;
constexpr double kMinCells = 64.0;
// Boxes sampled for the small-size quantile.
constexpr int kSizeSample = 1024;
// Walks over at most this many candidates (a small class) skip the grid.
constexpr int32_t kSmallWalk = 32;
// A search over more cells than this tries the level's flat list of kept boxes first.
constexpr int64_t kFlatFirst = 8;
// Safety margin on the IoU size bound (rounding of the arithmetic is ~1e-16 relative).
constexpr double kSizeSlack = 1.01;

// ---------------------------------------------------------------------------------------------
// Ranking: score descending, then input index ascending.
// ---------------------------------------------------------------------------------------------

// Input indices of boxes with (double)score >= score_threshold, ranked.
inline void rank_candidates(const float* scores, int64_t n, double score_threshold,
                            std::vector<int32_t>& order) {
    std::vector<uint32_t> keys;
    std::vector<int32_t> idx;
    keys.reserve(n);
    idx.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
        const float s = scores[i];
        if (!(static_cast<double>(s) >= score_threshold)) continue;
        uint32_t u;
        std::memcpy(&u, &s, sizeof u);
        if (s == 0.0f) u = 0;  // -0.0 ranks as 0.0
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // unsigned order == float order
        keys.push_back(~u);                                 // descending
        idx.push_back(static_cast<int32_t>(i));
    }
    const size_t m = keys.size();
    // LSD radix sort, 11 + 11 + 10 bits; stable, so equal scores keep ascending index order
    constexpr int kShift[3] = {0, 11, 22};
    constexpr uint32_t kMask[3] = {0x7FFu, 0x7FFu, 0x3FFu};
    std::vector<uint32_t> hist(3 * 2048, 0);
    for (size_t i = 0; i < m; ++i)
        for (int p = 0; p < 3; ++p) ++hist[p * 2048 + ((keys[i] >> kShift[p]) & kMask[p])];
    std::vector<uint32_t> keys2(m);
    std::vector<int32_t> idx2(m);
    for (int p = 0; p < 3; ++p) {
        uint32_t* h = &hist[p * 2048];
        bool one_bucket = false;
        for (int d = 0; d < 2048; ++d)
            if (h[d] == m) { one_bucket = true; break; }
        if (one_bucket) continue;  // this digit is the same everywhere: the pass would be a copy
        uint32_t sum = 0;
        for (int d = 0; d < 2048; ++d) { const uint32_t c = h[d]; h[d] = sum; sum += c; }
        for (size_t i = 0; i < m; ++i) {
            const uint32_t pos = h[(keys[i] >> kShift[p]) & kMask[p]]++;
            keys2[pos] = keys[i];
            idx2[pos] = idx[i];
        }
        keys.swap(keys2);
        idx.swap(idx2);
    }
    order.swap(idx);
}

// ---------------------------------------------------------------------------------------------
// Overlap tests (the spec's arithmetic: float64 from float32, in the same order)
// ---------------------------------------------------------------------------------------------

// Ranked candidates, structure of arrays (read in rank order, sequentially).
struct Ranked {
    std::vector<float> x1, y1, x2, y2;
    std::vector<double> area;
    std::vector<int32_t> label;  // dense class label 0..n_labels-1 (empty: one class)
    int32_t n_labels = 1;
    int32_t n = 0;

    void resize(int32_t m) {
        n = m;
        x1.resize(m); y1.resize(m); x2.resize(m); y2.resize(m); area.resize(m);
    }
};

// Positive-area overlap, exact on the float32 coordinates: min(x2) > max(x1) on both axes is
// the spec's iw > 0 and ih > 0 (a float64 difference of distinct values is never 0).
inline bool overlaps(float ax1, float ay1, float ax2, float ay2, float bx1, float by1, float bx2, float by2) {
    return ((ax2 < bx2 ? ax2 : bx2) > (ax1 > bx1 ? ax1 : bx1)) &
           ((ay2 < by2 ? ay2 : by2) > (ay1 > by1 ? ay1 : by1));
}

// The spec's match for two boxes that overlap with positive area (so its max(0, .) is a no-op
// and inter > 0): strict inter > t*denom, inclusive inter >= t*denom. Every match needs a
// positive overlap, except the inclusive t == 0 case, which never comes here (see group_all).
template <bool IOS, bool INCL>
inline bool overlap_matches(double ax1, double ay1, double ax2, double ay2, double aarea,
                            double bx1, double by1, double bx2, double by2, double barea, double t) {
    const double iw = (ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1);
    const double ih = (ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1);
    const double inter = iw * ih;
    const double denom = IOS ? (aarea < barea ? aarea : barea) : (aarea + barea) - inter;
    return INCL ? inter >= t * denom : inter > t * denom;
}

template <bool IOS, bool INCL>
inline bool pair_matches(float ax1, float ay1, float ax2, float ay2, double aarea,
                         float bx1, float by1, float bx2, float by2, double barea, double t) {
    return overlaps(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2) &&
           overlap_matches<IOS, INCL>(ax1, ay1, ax2, ay2, aarea, bx1, by1, bx2, by2, barea, t);
}

inline double area_of(float x1, float y1, float x2, float y2) {
    return (static_cast<double>(x2) - x1) * (static_cast<double>(y2) - y1);
}

// ---------------------------------------------------------------------------------------------
// Hierarchical grid of kept boxes
// ---------------------------------------------------------------------------------------------

// A kept box as stored in a cell, far corner negated so that "overlaps with positive area" is four
// `<` of the same direction (branch-free).
struct Entry {
    float x1, y1, neg_x2, neg_y2;
};

struct Level {
    double inv = 0.0;  // 1 / cell side
    int32_t nx = 1, ny = 1;
    int64_t base = 0;          // first cell of this level in Grid::start
    std::vector<int32_t> all;  // entries of every kept box of this level, ascending slot
};

// Every candidate that can match anything has entries reserved in each cell its box meets on its
// level (a counting sort by cell); when it is kept, copies go to those cells, after the boxes kept
// before it: cell c holds entries start[c] .. start[c] + fill[c], ascending by slot.
struct Grid {
    double ox = 0.0, oy = 0.0;
    std::vector<double> fit;  // fit[L]: largest box side stored on level L
    std::vector<Level> levels;
    std::vector<int32_t> start;  // per cell of all levels, plus one past the end
    std::vector<int32_t> fill;   // per cell: kept boxes stored so far (the first entries of the cell)
    std::vector<Entry> entries;
    std::vector<int32_t> slot;   // per entry: group number of the kept box (valid once kept)
    std::vector<int32_t> level_of_pos;  // per ranked candidate, -1 when inactive

    int32_t level_of(double side) const {
        const int32_t top = static_cast<int32_t>(fit.size()) - 1;
        if (!(side > fit[0])) return 0;
        if (side > fit[top]) return top;
        int32_t l = 1;
        while (side > fit[l]) ++l;
        return l;
    }
    static int32_t cell(double v, int32_t count) {
        if (!(v > 0.0)) return 0;
        if (v >= static_cast<double>(count - 1)) return count - 1;
        return static_cast<int32_t>(v);
    }
    // Cells [cx0, cx1] x [cy0, cy1] of level l that box (x1, y1, x2, y2) meets. Cell indices are
    // monotone in the coordinate, so boxes that overlap share at least one cell.
    void cells_of(int32_t l, double x1, double y1, double x2, double y2,
                  int32_t& cx0, int32_t& cy0, int32_t& cx1, int32_t& cy1) const {
        const Level& lv = levels[l];
        cx0 = cell((x1 - ox) * lv.inv, lv.nx);
        cy0 = cell((y1 - oy) * lv.inv, lv.ny);
        cx1 = cell((x2 - ox) * lv.inv, lv.nx);
        cy1 = cell((y2 - oy) * lv.inv, lv.ny);
    }
};

inline double side_of(const Ranked& r, int32_t p) {
    return std::max(static_cast<double>(r.x2[p]) - r.x1[p], static_cast<double>(r.y2[p]) - r.y1[p]);
}

// Set up the grid over the boxes that can match anything (positive width and height).
inline void build_grid(const Ranked& r, const std::vector<uint8_t>& active, Grid& g) {
    double minx = std::numeric_limits<double>::infinity(), miny = minx;
    double maxx = -minx, maxy = -minx, max_side = 0.0;
    int64_t n_active = 0;
    for (int32_t p = 0; p < r.n; ++p) {
        if (!active[p]) continue;
        ++n_active;
        minx = std::min(minx, static_cast<double>(r.x1[p]));
        miny = std::min(miny, static_cast<double>(r.y1[p]));
        maxx = std::max(maxx, static_cast<double>(r.x2[p]));
        maxy = std::max(maxy, static_cast<double>(r.y2[p]));
        max_side = std::max(max_side, side_of(r, p));
    }
    g.level_of_pos.assign(r.n, -1);
    if (n_active == 0) {
        g.fit.assign(1, 1.0);
        g.levels.assign(1, Level());
        return;
    }
    g.ox = minx;
    g.oy = miny;
    const double ext_w = maxx - minx, ext_h = maxy - miny;

    // small box side from an evenly spaced sample (rank order is spatially random)
    std::vector<double> sample;
    const int64_t step = std::max<int64_t>(1, n_active / kSizeSample);
    int64_t seen = 0;
    for (int32_t p = 0; p < r.n; ++p)
        if (active[p] && seen++ % step == 0) sample.push_back(side_of(r, p));
    std::nth_element(sample.begin(), sample.begin() + sample.size() / kSmallQuantile, sample.end());
    double s0 = sample[sample.size() / kSmallQuantile];
    if (!(s0 > 0.0) || !std::isfinite(s0)) s0 = 1.0;
    const double cap = kMinCells + kCellsPerBox * static_cast<double>(n_active);
    while ((std::floor(ext_w / s0) + 1.0) * (std::floor(ext_h / s0) + 1.0) > cap) s0 *= 2.0;

    // levels up to the one that holds the largest box
    g.fit.clear();
    double cs = s0;
    for (;;) {
        g.fit.push_back(cs);
        if (!(max_side > cs) || g.fit.size() >= 1100) break;  // 1100: beyond double range
        cs *= 2.0;
    }
    const int32_t nlev = static_cast<int32_t>(g.fit.size());
    g.levels.assign(nlev, Level());
    std::vector<uint8_t> used(nlev, 0);
    for (int32_t p = 0; p < r.n; ++p)
        if (active[p]) used[g.level_of_pos[p] = g.level_of(side_of(r, p))] = 1;
    int64_t n_cells = 0;
    cs = s0;
    for (int32_t l = 0; l < nlev; ++l, cs *= 2.0) {
        Level& lv = g.levels[l];
        lv.inv = 1.0 / cs;
        lv.base = n_cells;
        if (!used[l]) continue;
        lv.nx = static_cast<int32_t>(std::min(std::floor(ext_w * lv.inv) + 1.0, cap));
        lv.ny = static_cast<int32_t>(std::min(std::floor(ext_h * lv.inv) + 1.0, cap));
        n_cells += static_cast<int64_t>(lv.nx) * lv.ny;
    }
    // room for every active candidate in every cell it meets (a counting sort by cell)
    g.start.assign(n_cells + 1, 0);
    for (int32_t p = 0; p < r.n; ++p) {
        if (!active[p]) continue;
        const int32_t l = g.level_of_pos[p];
        int32_t cx0, cy0, cx1, cy1;
        g.cells_of(l, r.x1[p], r.y1[p], r.x2[p], r.y2[p], cx0, cy0, cx1, cy1);
        const Level& lv = g.levels[l];
        for (int32_t cy = cy0; cy <= cy1; ++cy)
            for (int32_t cx = cx0; cx <= cx1; ++cx)
                ++g.start[lv.base + static_cast<int64_t>(cy) * lv.nx + cx + 1];
    }
    for (int64_t c = 0; c < n_cells; ++c) g.start[c + 1] += g.start[c];
    g.fill.assign(n_cells, 0);
    g.entries.resize(g.start[n_cells]);
    g.slot.resize(g.start[n_cells]);
}

// ---------------------------------------------------------------------------------------------
// Greedy walk (phase 1), one class
// ---------------------------------------------------------------------------------------------

// The walk of greedy_walk without a grid, for a few boxes (a class of its own, say): each
// candidate against the kept boxes in slot order, the first match being the best.
template <bool IOS, bool INCL>
void greedy_walk_small(const Ranked& r, double t, int64_t max_groups, std::vector<int32_t>& keepers,
                       std::vector<int32_t>& group) {
    for (int32_t p = 0; p < r.n; ++p) {
        int32_t best = -1;
        for (size_t s = 0; s < keepers.size(); ++s) {
            const int32_t q = keepers[s];
            if (pair_matches<IOS, INCL>(r.x1[p], r.y1[p], r.x2[p], r.y2[p], r.area[p],
                                        r.x1[q], r.y1[q], r.x2[q], r.y2[q], r.area[q], t)) {
                best = static_cast<int32_t>(s);
                break;
            }
        }
        if (best >= 0) {
            group[p] = best;
            continue;
        }
        group[p] = static_cast<int32_t>(keepers.size());
        keepers.push_back(p);
        if (static_cast<int64_t>(keepers.size()) == max_groups) return;
    }
}

// Walk the ranked candidates: a candidate that matches kept boxes joins the group of the
// best-ranked of them (GROUPS) or is just dropped (plain NMS: the first match found decides);
// otherwise it is kept. keepers: ranked positions of the kept boxes; group[p]: group of position
// p, -1 when the walk stopped at max_groups before reaching p.
template <bool IOS, bool INCL, bool GROUPS>
void greedy_walk(const Ranked& r, double t, int64_t max_groups, std::vector<int32_t>& keepers,
                 std::vector<int32_t>& group) {
    constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
    const int32_t n = r.n;
    keepers.clear();
    group.assign(n, -1);
    if (n == 0 || max_groups == 0) return;
    if (n <= kSmallWalk) {
        greedy_walk_small<IOS, INCL>(r, t, max_groups, keepers, group);
        return;
    }

    // boxes without area match nothing (every match needs a positive overlap): never searched
    // for nor stored, always kept
    std::vector<uint8_t> active(n);
    for (int32_t p = 0; p < n; ++p) active[p] = r.x2[p] > r.x1[p] && r.y2[p] > r.y1[p];
    Grid g;
    build_grid(r, active, g);
    const int32_t nlev = static_cast<int32_t>(g.levels.size());
    const bool size_bound = !IOS && t > 0.0;
    Entry* entries = g.entries.data();
    int32_t* slot = g.slot.data();
    const int32_t* start = g.start.data();
    int32_t* fill = g.fill.data();
    int32_t n_kept = 0;

    for (int32_t p = 0; p < n; ++p) {
        int32_t best = kNone;
        if (active[p]) {
            const double ax1 = r.x1[p], ay1 = r.y1[p], ax2 = r.x2[p], ay2 = r.y2[p];
            const double aarea = r.area[p];
            const float fx2 = r.x2[p], fy2 = r.y2[p], neg_fx1 = -r.x1[p], neg_fy1 = -r.y1[p];
            // float prefilter = `overlaps` (both boxes have positive width and height), branch-free
            auto test = [&](const Entry& e) -> bool {
                const bool overlap =
                    (e.x1 < fx2) & (e.y1 < fy2) & (e.neg_x2 < neg_fx1) & (e.neg_y2 < neg_fy1);
                if (!overlap) return false;
                const float bx2 = -e.neg_x2, by2 = -e.neg_y2;
                return overlap_matches<IOS, INCL>(ax1, ay1, ax2, ay2, aarea, e.x1, e.y1, bx2, by2,
                                                  area_of(e.x1, e.y1, bx2, by2), t);
            };
            // Search level l; lowers best. True when plain NMS has its answer.
            auto search = [&](int32_t l) -> bool {
                const Level& lv = g.levels[l];
                const int64_t count = static_cast<int64_t>(lv.all.size());
                if (count == 0) return false;
                int32_t cx0, cy0, cx1, cy1;
                g.cells_of(l, ax1, ay1, ax2, ay2, cx0, cy0, cx1, cy1);
                const int64_t n_cells = static_cast<int64_t>(cx1 - cx0 + 1) * (cy1 - cy0 + 1);
                // A search over many cells (a large candidate) first walks the level's kept boxes
                // in slot order, as far as the cell search would cost: when matches are plentiful
                // (a large box over many small ones, IoS) one comes early, and the first is the
                // best of the level.
                if (n_cells > kFlatFirst) {
                    const int64_t budget = n_cells + kFlatFirst;
                    int64_t j = 0;
                    for (; j < count && j < budget; ++j) {
                        const int32_t i = lv.all[j];
                        if (GROUPS && slot[i] >= best) return false;
                        if (test(entries[i])) { best = slot[i]; return !GROUPS; }
                    }
                    if (j == count) return false;
                }
                for (int32_t cy = cy0; cy <= cy1; ++cy) {
                    const int64_t row = lv.base + static_cast<int64_t>(cy) * lv.nx;
                    for (int32_t cx = cx0; cx <= cx1; ++cx) {
                        const int32_t i0 = start[row + cx], i1 = i0 + fill[row + cx];
                        for (int32_t i = i0; i < i1; ++i) {  // kept entries of a cell ascend by slot
                            if (GROUPS && slot[i] >= best) break;
                            if (test(entries[i])) {
                                best = slot[i];
                                if (!GROUPS) return true;
                                break;
                            }
                        }
                    }
                }
                return false;
            };
            int32_t lo = 0, hi = nlev - 1;
            if (size_bound) {
                const double side = std::max(ax2 - ax1, ay2 - ay1);
                lo = g.level_of(side * t / kSizeSlack);
                hi = g.level_of(side / t * kSizeSlack);
            }
            // own level first: a duplicate detection of the same object, the usual match, is there
            const int32_t own = g.level_of_pos[p];
            if (!search(own)) {
                for (int32_t l = lo; l <= hi; ++l)
                    if (l != own && search(l)) break;
            }
        }
        if (best != kNone) {
            group[p] = best;
            continue;
        }
        // kept: a new group, stored in the cells it meets on its level
        const int32_t s = n_kept++;
        keepers.push_back(p);
        group[p] = s;
        if (active[p]) {
            const int32_t l = g.level_of_pos[p];
            Level& lv = g.levels[l];
            int32_t cx0, cy0, cx1, cy1;
            g.cells_of(l, r.x1[p], r.y1[p], r.x2[p], r.y2[p], cx0, cy0, cx1, cy1);
            const Entry e{r.x1[p], r.y1[p], -r.x2[p], -r.y2[p]};
            for (int32_t cy = cy0; cy <= cy1; ++cy) {
                for (int32_t cx = cx0; cx <= cx1; ++cx) {
                    const int64_t c = lv.base + static_cast<int64_t>(cy) * lv.nx + cx;
                    const int32_t i = start[c] + fill[c]++;
                    entries[i] = e;
                    slot[i] = s;
                    if (cy == cy0 && cx == cx0) lv.all.push_back(i);
                }
            }
        }
        if (static_cast<int64_t>(n_kept) == max_groups) return;
    }
}

template <bool GROUPS>
void walk_one_class(const Ranked& r, bool ios, bool inclusive, double t, int64_t max_groups,
                    std::vector<int32_t>& keepers, std::vector<int32_t>& group) {
    if (ios) {
        if (inclusive) greedy_walk<true, true, GROUPS>(r, t, max_groups, keepers, group);
        else greedy_walk<true, false, GROUPS>(r, t, max_groups, keepers, group);
    } else {
        if (inclusive) greedy_walk<false, true, GROUPS>(r, t, max_groups, keepers, group);
        else greedy_walk<false, false, GROUPS>(r, t, max_groups, keepers, group);
    }
}

// Inclusive match with t == 0 matches every pair: each class is one group, led by its best box.
inline void group_all(const Ranked& r, std::vector<int32_t>& keepers, std::vector<int32_t>& group) {
    keepers.clear();
    group.assign(r.n, -1);
    std::vector<int32_t> leader(r.n_labels, -1);
    for (int32_t p = 0; p < r.n; ++p) {
        const int32_t c = r.label.empty() ? 0 : r.label[p];
        if (leader[c] < 0) {
            leader[c] = static_cast<int32_t>(keepers.size());
            keepers.push_back(p);
        }
        group[p] = leader[c];
    }
}

// Phase 1 for any metric / match kind. Classes (r.label) are walked apart, each with its own
// grid, then the groups are numbered in global rank order of their keepers.
inline void walk(const Ranked& r, bool ios, bool inclusive, bool groups, double t, int64_t max_groups,
                 std::vector<int32_t>& keepers, std::vector<int32_t>& group) {
    if (inclusive && t == 0.0) {
        group_all(r, keepers, group);
        if (max_groups >= 0 && static_cast<int64_t>(keepers.size()) > max_groups) keepers.resize(max_groups);
        return;
    }
    auto one = [&](const Ranked& c, std::vector<int32_t>& k, std::vector<int32_t>& gr) {
        if (groups) walk_one_class<true>(c, ios, inclusive, t, max_groups, k, gr);
        else walk_one_class<false>(c, false, false, t, max_groups, k, gr);  // plain NMS: strict IoU
    };
    if (r.label.empty() || r.n_labels == 1) {
        one(r, keepers, group);
        return;
    }
    // split by class, rank order kept within each (counting sort)
    std::vector<int32_t> first(static_cast<size_t>(r.n_labels) + 1, 0), pos(r.n);
    for (int32_t p = 0; p < r.n; ++p) ++first[r.label[p] + 1];
    for (int32_t c = 0; c < r.n_labels; ++c) first[c + 1] += first[c];
    {
        std::vector<int32_t> fill(first.begin(), first.end() - 1);
        for (int32_t p = 0; p < r.n; ++p) pos[fill[r.label[p]]++] = p;
    }
    std::vector<int32_t> leader_of(r.n, -1);  // ranked position -> its group's keeper position
    std::vector<uint8_t> is_keeper(r.n, 0);
    Ranked sub;
    std::vector<int32_t> k, gr;
    for (int32_t c = 0; c < r.n_labels; ++c) {
        const int32_t m = first[c + 1] - first[c];
        const int32_t* pc = pos.data() + first[c];
        sub.resize(m);
        for (int32_t i = 0; i < m; ++i) {
            const int32_t p = pc[i];
            sub.x1[i] = r.x1[p]; sub.y1[i] = r.y1[p]; sub.x2[i] = r.x2[p]; sub.y2[i] = r.y2[p];
            sub.area[i] = r.area[p];
        }
        one(sub, k, gr);
        for (int32_t kp : k) is_keeper[pc[kp]] = 1;
        for (int32_t i = 0; i < m; ++i)
            if (gr[i] >= 0) leader_of[pc[i]] = pc[k[gr[i]]];
    }
    // global group numbers: keepers in rank order, cut at max_groups
    std::vector<int32_t> slot_of(r.n, -1);
    keepers.clear();
    for (int32_t p = 0; p < r.n; ++p) {
        if (!is_keeper[p]) continue;
        if (max_groups >= 0 && static_cast<int64_t>(keepers.size()) == max_groups) break;
        slot_of[p] = static_cast<int32_t>(keepers.size());
        keepers.push_back(p);
    }
    group.assign(r.n, -1);
    if (!groups) return;
    for (int32_t p = 0; p < r.n; ++p)
        if (leader_of[p] >= 0) group[p] = slot_of[leader_of[p]];
}

// Ranked candidates from the input; class labels only when classes are kept apart.
inline void gather_ranked(const float* boxes, const int64_t* class_ids, const std::vector<int32_t>& order,
                          Ranked& r) {
    const int32_t n = static_cast<int32_t>(order.size());
    r.resize(n);
    for (int32_t p = 0; p < n; ++p) {
        const float* b = boxes + 4 * static_cast<int64_t>(order[p]);
        r.x1[p] = b[0]; r.y1[p] = b[1]; r.x2[p] = b[2]; r.y2[p] = b[3];
        r.area[p] = area_of(b[0], b[1], b[2], b[3]);
    }
    r.label.clear();
    r.n_labels = 1;
    if (!class_ids || n == 0) return;
    r.label.resize(n);
    int64_t lo = class_ids[order[0]], hi = lo;
    for (int32_t p = 1; p < n; ++p) {
        lo = std::min(lo, class_ids[order[p]]);
        hi = std::max(hi, class_ids[order[p]]);
    }
    int32_t next = 0;
    // usual detector classes are a small range: a table; anything else: a hash map
    if (static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) < 4 * static_cast<uint64_t>(n) + 64) {
        std::vector<int32_t> table(static_cast<size_t>(hi - lo) + 1, -1);
        for (int32_t p = 0; p < n; ++p) {
            int32_t& lab = table[static_cast<size_t>(class_ids[order[p]] - lo)];
            if (lab < 0) lab = next++;
            r.label[p] = lab;
        }
    } else {
        std::unordered_map<int64_t, int32_t> table;
        for (int32_t p = 0; p < n; ++p) {
            auto it = table.emplace(class_ids[order[p]], next).first;
            if (it->second == next) ++next;
            r.label[p] = it->second;
        }
    }
    r.n_labels = next;
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

// Greedy NMS (strict IoU). Writes kept input indices in rank order to out; returns their count.
inline int64_t nms(const float* boxes, const float* scores, const int64_t* class_ids, int64_t n,
                   double iou_threshold, double score_threshold, int64_t max_detections, int64_t* out) {
    std::vector<int32_t> order;
    rank_candidates(scores, n, score_threshold, order);
    Ranked r;
    gather_ranked(boxes, class_ids, order, r);
    std::vector<int32_t> keepers, group;
    walk(r, false, false, false, iou_threshold, max_detections, keepers, group);
    for (size_t i = 0; i < keepers.size(); ++i) out[i] = order[keepers[i]];
    return static_cast<int64_t>(keepers.size());
}

// Group ("nms" mode) or group and merge ("nmm" mode, SAHI's greedy NMM); see nms.py.
// Outputs have room for n rows; returns the number of groups M.
inline int64_t merge(const float* boxes, const float* scores, const int64_t* class_ids, int64_t n,
                     bool class_aware, bool nmm, bool ios, double t, double score_threshold,
                     float* out_boxes, float* out_scores, int64_t* out_class_ids, int64_t* out_keep,
                     int64_t* out_members) {
    std::vector<int32_t> order;
    rank_candidates(scores, n, score_threshold, order);
    Ranked r;
    gather_ranked(boxes, class_aware ? class_ids : nullptr, order, r);
    std::vector<int32_t> keepers, group;
    walk(r, ios, nmm, true, t, -1, keepers, group);
    const int32_t m = static_cast<int32_t>(keepers.size());
    const int32_t nr = r.n;

    // members of each group in rank order (counting sort by group, stable)
    std::vector<int32_t> start(static_cast<size_t>(m) + 1, 0);
    for (int32_t p = 0; p < nr; ++p) ++start[group[p] + 1];
    for (int32_t g = 0; g < m; ++g) start[g + 1] += start[g];
    for (int32_t g = 0; g < m; ++g) {
        const int32_t kp = keepers[g];
        const int32_t src = order[kp];
        out_keep[g] = src;
        out_scores[g] = scores[src];
        out_class_ids[g] = class_ids ? class_ids[src] : 0;
        out_members[g] = start[g + 1] - start[g];
        float* ob = out_boxes + 4 * static_cast<int64_t>(g);
        ob[0] = r.x1[kp]; ob[1] = r.y1[kp]; ob[2] = r.x2[kp]; ob[3] = r.y2[kp];
    }
    if (!nmm) return m;

    std::vector<int32_t> fill(start.begin(), start.end() - 1), members(nr);
    for (int32_t p = 0; p < nr; ++p) members[fill[group[p]]++] = p;
    for (int32_t g = 0; g < m; ++g) {
        // phase 2 (SAHI's _apply_merge): fold members that strictly match the box merged so far
        float* ob = out_boxes + 4 * static_cast<int64_t>(g);
        float x1 = ob[0], y1 = ob[1], x2 = ob[2], y2 = ob[3];
        for (int32_t i = start[g]; i < start[g + 1]; ++i) {
            const int32_t p = members[i];
            if (p == keepers[g]) continue;
            const double area_m = area_of(x1, y1, x2, y2);
            const float u1 = r.x1[p], v1 = r.y1[p], u2 = r.x2[p], v2 = r.y2[p];
            const double area_p = r.area[p];
            const bool hit = ios ? pair_matches<true, false>(x1, y1, x2, y2, area_m, u1, v1, u2, v2, area_p, t)
                                 : pair_matches<false, false>(x1, y1, x2, y2, area_m, u1, v1, u2, v2, area_p, t);
            if (hit) {
                if (u1 < x1) x1 = u1;
                if (v1 < y1) y1 = v1;
                if (u2 > x2) x2 = u2;
                if (v2 > y2) y2 = v2;
            }
        }
        ob[0] = x1; ob[1] = y1; ob[2] = x2; ob[3] = y2;
    }
    return m;
}

}  // namespace edge_nms
