/* autograd.h: the backward engine. The graph it runs (nodes, saved tensors, edges) is recorded by
 * the core's ops (csrc/core/graph.h); this layer only runs it. The engine runs nodes in dependency order,
 * latest-created first, so a parameter's gradient is final - and its post-accumulate hooks fire - as early as possible
 * (what overlapping all-reduce needs). */
#ifndef DC_AUTOGRAD_H
#define DC_AUTOGRAD_H

#include "../core/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Run backward from `root` with gradient `grad` (NULL: root must have one element: grad = 1).
 * Gradients accumulate into leaves' .grad. Runs entirely in C; call it without the GIL. */
dc_status dc_backward(dc_tensor *root, dc_tensor *grad, int retain_graph);

#ifdef __cplusplus
}
#endif
#endif
