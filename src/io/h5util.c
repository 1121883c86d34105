/* h5util.c - HDF5 helpers shared by the checkpoint and dataset readers (see h5util.h). */
#include "h5util.h"
#include <stdio.h>

void nnp__h5_quiet_on(nnp__h5_quiet *q)
{
    /* HDF5's exit handler crashes on a file whose H5Fclose failed (HDF5 1.10: the file
     * stays half-closed). nnprec's files are always closed before a call returns, so the
     * handler has nothing to do; it is turned off before the library initializes (every
     * public HDF5-using function starts here). */
    H5dont_atexit();
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void nnp__h5_quiet_off(const nnp__h5_quiet *q) { H5Eset_auto2(H5E_DEFAULT, q->func, q->data); }

void nnp__h5_dtype_str(hid_t t, char *buf, size_t cap)
{
    size_t sz = H5Tget_size(t);
    switch (H5Tget_class(t)) {
    case H5T_FLOAT: snprintf(buf, cap, "float%zu", 8 * sz); break;
    case H5T_INTEGER:
        snprintf(buf, cap, "%s%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", 8 * sz);
        break;
    case H5T_STRING: snprintf(buf, cap, "string"); break;
    case H5T_COMPOUND: snprintf(buf, cap, "compound"); break;
    default: snprintf(buf, cap, "non-numeric type"); break;
    }
}
