/* op.h: the op identities of the core, generated from ops.def (public).
 *
 * An op is one line of ops.def; everything here is derived from that table, so nothing depends on
 * the order of the lines. Public functions of ops.h take a dc_op; the per-device kernel tables
 * (backend-impl.h, private) are indexed by it. */
#ifndef DC_OP_H
#define DC_OP_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DC_OP_NONE = -1, /* "no op": the backward column of ops that compose their backward */
#define DC_OP(id, name, fam, kern, bwd, saves, params, node) DC_OP_##id,
#include "ops.def"
#undef DC_OP
    DC_OP_COUNT
} dc_op;

typedef enum {
    DC_FAM_CREATE,
    DC_FAM_UNARY,
    DC_FAM_SCALAR,
    DC_FAM_BINARY,
    DC_FAM_COMPARE,
    DC_FAM_GRAD,
    DC_FAM_WHERE,
    DC_FAM_REDUCE,
    DC_FAM_ARGREDUCE,
    DC_FAM_SOFTMAX,
    DC_FAM_NORM,
    DC_FAM_LINALG,
    DC_FAM_INDEX,
    DC_FAM_SCAN,
    DC_FAM_SORT,
    DC_FAM_OPTIM,
    DC_FAM_CONV,
    DC_FAM_POOL,
    DC_FAM_COUNT
} dc_op_family_t;

/* What a UNARY op's backward needs saved. */
typedef enum { DC_SAVES_NONE, DC_SAVES_INPUT, DC_SAVES_OUTPUT } dc_op_saves_t;

typedef struct {
    const char *name;      /* "exp" */
    dc_op_family_t family; /* DC_FAM_UNARY */
    dc_op backward;        /* DC_OP_NONE or the GRAD op computing the backward */
    dc_op_saves_t saves;   /* for UNARY/SCALAR ops */
    const char *params;    /* "none", "clamp", ...: the member of dc_kargs.p its kernels read */
    const char *node;      /* autograd node name, "" when never recorded */
} dc_op_info_t;

extern const dc_op_info_t dc_op_info[DC_OP_COUNT];
extern const char *const dc_op_names[DC_OP_COUNT];
extern const char *const dc_op_family_names[DC_FAM_COUNT];

/* The info row of op, NULL for an id out of range. */
static inline const dc_op_info_t *dc_op_get(int op)
{
    return op >= 0 && op < DC_OP_COUNT ? &dc_op_info[op] : 0;
}
/* Is op a valid id of family fam? */
static inline int dc_op_is(int op, dc_op_family_t fam)
{
    return op >= 0 && op < DC_OP_COUNT && dc_op_info[op].family == fam;
}
/* The op called `name` (ops.def's second column), DC_OP_NONE if none. */
dc_op dc_op_by_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
