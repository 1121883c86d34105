/* h5util.h - internal helpers shared by nnprec's HDF5 users (checkpoints in src/io/ckpt_*.c,
 * datasets in src/data/h5data.c). Not part of the public interface. */
#ifndef NNPREC_H5UTIL_H
#define NNPREC_H5UTIL_H
#include <stddef.h>
#include <hdf5.h>

/* HDF5's automatic error printing, saved by nnp__h5_quiet_on and restored by
 * nnp__h5_quiet_off around the body of every public function that calls HDF5: failures
 * become one nnp_error() message instead of HDF5's stack dump. */
typedef struct {
    H5E_auto2_t func;
    void *data;
} nnp__h5_quiet;

void nnp__h5_quiet_on(nnp__h5_quiet *q);
void nnp__h5_quiet_off(const nnp__h5_quiet *q);

/* A dataset type as "float32", "uint8", "int64", "string", ... for error messages. */
void nnp__h5_dtype_str(hid_t t, char *buf, size_t cap);

#endif
