// Tile-based CPU rasteriser for planar 2D Gaussians: forward and hand-written backward.
//
// Inputs are the pixel-space Gaussians produced by timm_gvit/rendering/projection.py:
//   means   [B, K, 2]  centres in pixels (pixel (i, j) has its centre at (j + 0.5, i + 0.5))
//   conics  [B, K, 3]  (A, B, C) of the inverse covariance in pixels
//   colors  [B, K, 3]
//   opacity [B, K]
//   qmax    [B, K]     Mahalanobis^2 beyond which alpha < alpha_min (culling bound)
//   extent  [B, K, 2]  half-width/height in pixels of the ellipse q <= qmax (culling box)
//   background [B, 3]
// Compositing is front to back in index order (docs/method.md section 3):
//   alpha_i = min(alpha_max, o_i exp(-q_i / 2));  contributions with alpha < alpha_min are skipped;
//   a pixel stops before the Gaussian that would take its transmittance to t_min or below (that
//   Gaussian and all behind it do not count), as gsplat's rasteriser does.
// The backward pass recomputes the forward per pixel (nothing of size B*K*H*W is ever stored) and
// walks the contributing Gaussians back to front with the normalised composite behind them, so it
// needs no division by (1 - alpha).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kTile = 16;

// Gaussians of image b whose culling box touches each tile of one tile row, in index order.
template <typename scalar_t>
std::vector<std::vector<int32_t>> bin_tile_row(const scalar_t* means, const scalar_t* extent,
                                               const scalar_t* qmax, int64_t K, int64_t tile_row,
                                               int64_t height, int64_t width) {
  const int64_t tiles_x = (width + kTile - 1) / kTile;
  std::vector<std::vector<int32_t>> lists(tiles_x);
  const int64_t row0 = tile_row * kTile, row1 = std::min(height, row0 + kTile) - 1;
  for (int64_t g = 0; g < K; ++g) {
    if (!(qmax[g] >= 0)) continue;  // opacity below alpha_min: never visible
    const double mx = means[2 * g], my = means[2 * g + 1];
    const double ex = extent[2 * g], ey = extent[2 * g + 1];
    // pixel i is touched when |i + 0.5 - my| <= ey
    const double ilo = std::ceil(my - ey - 0.5), ihi = std::floor(my + ey - 0.5);
    if (ihi < row0 || ilo > row1) continue;
    const double jlo = std::max(0.0, std::ceil(mx - ex - 0.5));
    const double jhi = std::min<double>(width - 1, std::floor(mx + ex - 0.5));
    if (jhi < jlo) continue;
    for (int64_t tx = int64_t(jlo) / kTile; tx <= int64_t(jhi) / kTile; ++tx) lists[tx].push_back(g);
  }
  return lists;
}

struct Params {
  int64_t B, K, H, W;
  double alpha_min, alpha_max, t_min;
};

// The Gaussians of one image and the compositing settings.
template <typename scalar_t>
struct ImageScene {
  const scalar_t *means, *conics, *colors, *opacity, *qmax, *extent, *background;
  scalar_t alpha_min, alpha_max, t_min;

  ImageScene(const at::Tensor& m, const at::Tensor& q, const at::Tensor& c, const at::Tensor& o, const at::Tensor& qm,
             const at::Tensor& e, const at::Tensor& bg, const Params& p, int64_t b)
      : means(m.data_ptr<scalar_t>() + b * p.K * 2), conics(q.data_ptr<scalar_t>() + b * p.K * 3),
        colors(c.data_ptr<scalar_t>() + b * p.K * 3), opacity(o.data_ptr<scalar_t>() + b * p.K),
        qmax(qm.data_ptr<scalar_t>() + b * p.K), extent(e.data_ptr<scalar_t>() + b * p.K * 2),
        background(bg.data_ptr<scalar_t>() + b * 3), alpha_min(p.alpha_min), alpha_max(p.alpha_max), t_min(p.t_min) {}

  // Composite one pixel front to back over a tile's list, calling
  // on_hit(g, alpha, T_in_front, gauss, dx, dy, clamped) for every contributing Gaussian.
  // Forward and backward both walk pixels through here, so they make the same decisions.
  // Returns the final transmittance.
  template <typename OnHit>
  scalar_t walk(const std::vector<int32_t>& list, scalar_t px, scalar_t py, OnHit on_hit) const {
    scalar_t T = 1;
    for (int32_t g : list) {
      const scalar_t dx = px - means[2 * g], dy = py - means[2 * g + 1];
      const scalar_t* q = conics + 3 * g;
      const scalar_t mahal = q[0] * dx * dx + 2 * q[1] * dx * dy + q[2] * dy * dy;
      if (mahal > qmax[g]) continue;
      const scalar_t gauss = std::exp(scalar_t(-0.5) * mahal);
      const scalar_t raw = opacity[g] * gauss;
      const scalar_t alpha = std::min(alpha_max, raw);
      if (alpha < alpha_min || !(gauss > 0)) continue;  // gauss 0: no effect, and no 0 * inf below
      const scalar_t next_T = T * (1 - alpha);
      if (next_T <= t_min) break;
      on_hit(g, alpha, T, gauss, dx, dy, raw > alpha_max);
      T = next_T;
    }
    return T;
  }
};

// Run fn(pixel_index, list, px, py) for every pixel of tile row ty of image b.
template <typename scalar_t, typename Fn>
void for_each_pixel(const ImageScene<scalar_t>& scene, const Params& p, int64_t ty, Fn fn) {
  const auto lists = bin_tile_row(scene.means, scene.extent, scene.qmax, p.K, ty, p.H, p.W);
  for (int64_t tx = 0; tx < int64_t(lists.size()); ++tx) {
    for (int64_t i = ty * kTile; i < std::min(p.H, (ty + 1) * kTile); ++i) {
      for (int64_t j = tx * kTile; j < std::min(p.W, (tx + 1) * kTile); ++j) {
        fn(i * p.W + j, lists[tx], j + scalar_t(0.5), i + scalar_t(0.5));
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opacity, const at::Tensor& qmax, const at::Tensor& extent,
                  const at::Tensor& background, at::Tensor& out, const Params& p) {
  const int64_t tiles_y = (p.H + kTile - 1) / kTile, HW = p.H * p.W;
  at::parallel_for(0, p.B * tiles_y, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles_y;
      const ImageScene<scalar_t> scene(means, conics, colors, opacity, qmax, extent, background, p, b);
      scalar_t* img = out.data_ptr<scalar_t>() + b * 3 * HW;
      for_each_pixel(scene, p, task % tiles_y, [&](int64_t pix, const std::vector<int32_t>& list, scalar_t px, scalar_t py) {
        scalar_t rgb[3] = {0, 0, 0};
        const scalar_t T = scene.walk(list, px, py, [&](int32_t g, scalar_t alpha, scalar_t t, scalar_t, scalar_t, scalar_t, bool) {
          for (int ch = 0; ch < 3; ++ch) rgb[ch] += alpha * t * scene.colors[3 * g + ch];
        });
        for (int ch = 0; ch < 3; ++ch) img[ch * HW + pix] = rgb[ch] + T * scene.background[ch];
      });
    }
  });
}

template <typename scalar_t>
struct Hit {
  int32_t g;
  scalar_t alpha, T, gauss, dx, dy;  // gauss = exp(-q/2); T = transmittance in front of g
  bool clamped;
};

template <typename scalar_t>
void backward_impl(const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors,
                   const at::Tensor& opacity, const at::Tensor& qmax, const at::Tensor& extent,
                   const at::Tensor& background, const at::Tensor& grad_out, at::Tensor& grads,
                   at::Tensor& grad_bg, const Params& p) {
  // grads: [B, tiles_y, K, 9] (means 2, conics 3, colors 3, opacity 1), one slice per task.
  const int64_t tiles_y = (p.H + kTile - 1) / kTile, HW = p.H * p.W;
  at::parallel_for(0, p.B * tiles_y, 1, [&](int64_t begin, int64_t end) {
    std::vector<Hit<scalar_t>> hits;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles_y;
      const ImageScene<scalar_t> scene(means, conics, colors, opacity, qmax, extent, background, p, b);
      const scalar_t* go = grad_out.data_ptr<scalar_t>() + b * 3 * HW;
      scalar_t* gr = grads.data_ptr<scalar_t>() + task * p.K * 9;
      scalar_t* gbg = grad_bg.data_ptr<scalar_t>() + task * 3;
      for_each_pixel(scene, p, task % tiles_y, [&](int64_t pix, const std::vector<int32_t>& list, scalar_t px, scalar_t py) {
        // Forward again, remembering what each contributing Gaussian did to this pixel.
        hits.clear();
        const scalar_t T = scene.walk(list, px, py, [&](int32_t g, scalar_t alpha, scalar_t t, scalar_t gauss, scalar_t dx, scalar_t dy, bool clamped) {
          hits.push_back({g, alpha, t, gauss, dx, dy, clamped});
        });
        const scalar_t gout[3] = {go[pix], go[HW + pix], go[2 * HW + pix]};
        // Back to front: s = composite of everything behind the current Gaussian, as seen
        // with transmittance 1 (starts as the background).
        scalar_t s[3];
        for (int ch = 0; ch < 3; ++ch) {
          gbg[ch] += T * gout[ch];
          s[ch] = scene.background[ch];
        }
        for (auto h = hits.rbegin(); h != hits.rend(); ++h) {
          const int32_t g = h->g;
          const scalar_t* c = scene.colors + 3 * g;
          const scalar_t* q = scene.conics + 3 * g;
          scalar_t* gg = gr + 9 * g;
          scalar_t d_alpha = 0;
          for (int ch = 0; ch < 3; ++ch) {
            gg[5 + ch] += h->alpha * h->T * gout[ch];
            d_alpha += h->T * gout[ch] * (c[ch] - s[ch]);
            s[ch] = h->alpha * c[ch] + (1 - h->alpha) * s[ch];
          }
          if (h->clamped) continue;
          gg[8] += d_alpha * h->gauss;
          const scalar_t d_q = scalar_t(-0.5) * d_alpha * h->alpha;
          const scalar_t dx = h->dx, dy = h->dy;
          gg[2] += d_q * dx * dx;
          gg[3] += d_q * 2 * dx * dy;
          gg[4] += d_q * dy * dy;
          gg[0] -= d_q * 2 * (q[0] * dx + q[1] * dy);
          gg[1] -= d_q * 2 * (q[1] * dx + q[2] * dy);
        }
      });
    }
  });
}

void check_inputs(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts) {
    TORCH_CHECK(t.device().is_cpu(), "timm_gvit rasterize_cpu: tensors must be on the CPU");
    TORCH_CHECK(t.is_contiguous(), "timm_gvit rasterize_cpu: tensors must be contiguous");
    TORCH_CHECK(t.scalar_type() == ts[0].scalar_type(), "timm_gvit rasterize_cpu: mixed dtypes");
  }
}

at::Tensor rasterize_forward(const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors,
                             const at::Tensor& opacity, const at::Tensor& qmax, const at::Tensor& extent,
                             const at::Tensor& background, int64_t height, int64_t width, double alpha_min,
                             double alpha_max, double t_min) {
  check_inputs({means, conics, colors, opacity, qmax, extent, background});
  const Params p{means.size(0), means.size(1), height, width, alpha_min, alpha_max, t_min};
  auto out = at::empty({p.B, 3, height, width}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_forward", [&] {
    forward_impl<scalar_t>(means, conics, colors, opacity, qmax, extent, background, out, p);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rasterize_backward(
    const at::Tensor& means, const at::Tensor& conics, const at::Tensor& colors, const at::Tensor& opacity,
    const at::Tensor& qmax, const at::Tensor& extent, const at::Tensor& background, const at::Tensor& grad_out,
    int64_t height, int64_t width, double alpha_min, double alpha_max, double t_min) {
  check_inputs({means, conics, colors, opacity, qmax, extent, background, grad_out});
  const Params p{means.size(0), means.size(1), height, width, alpha_min, alpha_max, t_min};
  const int64_t tiles_y = (height + kTile - 1) / kTile;
  auto grads = at::zeros({p.B, tiles_y, p.K, 9}, means.options());
  auto grad_bg = at::zeros({p.B, tiles_y, 3}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "rasterize_backward", [&] {
    backward_impl<scalar_t>(means, conics, colors, opacity, qmax, extent, background, grad_out, grads, grad_bg, p);
  });
  auto g = grads.sum(1);
  return {g.narrow(2, 0, 2), g.narrow(2, 2, 3), g.narrow(2, 5, 3), g.select(2, 8), grad_bg.sum(1)};
}

}  // namespace

TORCH_LIBRARY(timm_gvit, m) {
  m.def("rasterize_forward(Tensor means, Tensor conics, Tensor colors, Tensor opacity, Tensor qmax, "
        "Tensor extent, Tensor background, int height, int width, float alpha_min, float alpha_max, "
        "float t_min) -> Tensor");
  m.def("rasterize_backward(Tensor means, Tensor conics, Tensor colors, Tensor opacity, Tensor qmax, "
        "Tensor extent, Tensor background, Tensor grad_out, int height, int width, float alpha_min, "
        "float alpha_max, float t_min) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(timm_gvit, CPU, m) {
  m.impl("rasterize_forward", &rasterize_forward);
  m.impl("rasterize_backward", &rasterize_backward);
}
